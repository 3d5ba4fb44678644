"""The README's configuration table is the Settings class: every variable, with its default."""

from __future__ import annotations

from pathlib import Path

from imgflow.core.settings import Settings

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:  # a structure (presets): the row describes it
            assert f"| `IMGFLOW_{name.upper()}` |" in README, name
            continue
        default = getattr(field.default, "value", field.default)
        if isinstance(default, bool):
            default = str(default).lower()
        assert f"| `IMGFLOW_{name.upper()}` | `{default}` |" in README, name


def test_the_readme_commands_exist_in_the_makefile() -> None:
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    for target in ("demo", "test", "up", "down", "bench", "images", "cluster-up", "deploy", "cluster-down"):
        assert f"make {target}" in README, target
        assert f"\n{target}:" in makefile, target
