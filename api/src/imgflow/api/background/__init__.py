"""What an API process runs beside its requests: the reconciler and the webhook sender."""
