// sharp as a peer engine: the same JSON-lines protocol as bench/runner.py, driven by bench/engine.py.
//
//   {"op": "load", "subsets": {"jpeg12mp": ["/path/a.jpg", ...], ...}}
//   {"op": "run", "engine": "sharp", "subset": "jpeg12mp", "threads": 2, "start_at": 1.7e9, "seconds": 1.2}
//   {"op": "thumbs", "subset": "jpeg12mp", "outdir": "/tmp/x", "lossless": false}
//       -> outdir/<source name>.jpg (.png when lossless)
//   {"op": "quit"}
//
// The thumbnail: resize(100, 100, {fit: 'cover'}) (lanczos3, centre crop, sharp's shrink-on-load),
// JPEG quality 85 with sharp's defaults otherwise (optimised Huffman tables, 4:2:0, no metadata).
// "threads" here is the number of images in flight: sharp runs each on libuv's thread pool, with
// sharp.concurrency(1) libvips thread per image (sharp's own default on glibc Linux).
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import sharp from 'sharp';

sharp.concurrency(1);

const thumbnail = (buffer) =>
  sharp(buffer).resize(100, 100, { fit: 'cover' }).jpeg({ quality: 85 }).toBuffer();
// the same pixels, losslessly: for bench/quality.py's before-encoding score
const thumbnailPng = (buffer) => sharp(buffer).resize(100, 100, { fit: 'cover' }).png().toBuffer();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const cpuSeconds = () => {
  const { user, system } = process.cpuUsage(); // the whole process: every libuv and libvips thread
  return (user + system) / 1e6;
};

const sources = new Map(); // subset -> [{name, buffer}]

async function run({ subset, threads, start_at: startAt, seconds }) {
  const items = sources.get(subset);
  const loop = async (index) => {
    await thumbnail(items[index % items.length].buffer); // warm-up
    await sleep(startAt * 1000 - Date.now());
    const started = performance.now();
    const deadline = started + (startAt + seconds) * 1000 - Date.now();
    let count = 0;
    for (let i = index; performance.now() < deadline; i++) {
      await thumbnail(items[i % items.length].buffer);
      count++;
    }
    return { count, elapsed: (performance.now() - started) / 1000 };
  };
  const pending = Array.from({ length: threads }, (_, i) => loop(i));
  await sleep(startAt * 1000 - Date.now());
  const cpu = cpuSeconds();
  const done = await Promise.all(pending);
  return {
    images: done.reduce((sum, d) => sum + d.count, 0),
    rate: done.reduce((sum, d) => sum + (d.elapsed > 0 ? d.count / d.elapsed : 0), 0),
    cpu: cpuSeconds() - cpu,
  };
}

async function handle(request) {
  switch (request.op) {
    case 'load':
      for (const [key, paths] of Object.entries(request.subsets)) {
        sources.set(key, paths.map((p) => ({ name: basename(p), buffer: readFileSync(p) })));
      }
      return { ok: true, sharp: sharp.versions.sharp, libvips: sharp.versions.vips, concurrency: sharp.concurrency() };
    case 'run':
      return run(request);
    case 'thumbs':
      for (const { name, buffer } of sources.get(request.subset)) {
        const [make, suffix] = request.lossless ? [thumbnailPng, 'png'] : [thumbnail, 'jpg'];
        writeFileSync(join(request.outdir, `${name}.${suffix}`), await make(buffer));
      }
      return { ok: true };
    default:
      return { error: `unknown op ${request.op}` };
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  const request = JSON.parse(line);
  if (request.op === 'quit') break;
  let answer;
  try {
    answer = await handle(request);
  } catch (err) {
    answer = { error: String(err && err.stack ? err.stack : err) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
process.exit(0);
