import { classNamesOf, loadPretrained, tensor, TorchError } from '..';
import { type InputFlags, inputSpec } from './data';
import { intFlag } from './flags';

export async function runPredict(modelPath: string, images: string[], flags: InputFlags & { top: string; json?: boolean }): Promise<void> {
  const k = intFlag(flags.top, '--top');
  await using model = await loadPretrained(modelPath);
  const { shape, mean, std } = inputSpec(model, flags, modelPath);
  const [channels, size] = shape;
  const pixels = size * size;
  const batch = new Float32Array(images.length * channels * pixels);
  const { default: sharp } = await import('sharp');
  await Promise.all(
    images.map(async (file, n) => {
      let decoded;
      try {
        let image = sharp(file, { failOn: 'error' }).removeAlpha().resize(size, size, { fit: 'cover' });
        image = channels === 1 ? image.greyscale() : image.toColourspace('srgb');
        decoded = await image.raw().toBuffer({ resolveWithObject: true });
      } catch (error) {
        throw new TorchError('TORCHLITE_BAD_DATA', `cannot read image ${file}: ${(error as Error).message}`);
      }
      const { data, info } = decoded;
      for (let p = 0; p < pixels; p++)
        for (let c = 0; c < channels; c++) batch[(n * channels + c) * pixels + p] = (data[p * info.channels + Math.min(c, info.channels - 1)] / 255 - mean[c]) / std[c];
    }),
  );
  const { probabilities } = await model.predict(tensor(batch, [images.length, channels, size, size]));
  const probs = (await probabilities.read()) as Float32Array;
  const classes = probabilities.shape[1];
  const names = classNamesOf(model);
  const results = images.map((file, n) => ({
    file,
    top: Array.from(probs.subarray(n * classes, (n + 1) * classes), (p, c) => ({ label: names?.[c] ?? String(c), probability: p }))
      .sort((a, b) => b.probability - a.probability)
      .slice(0, k),
  }));
  if (flags.json) console.log(JSON.stringify(results));
  else for (const r of results) console.log(`${r.file}: ${r.top.map((t) => `${t.label} ${(t.probability * 100).toFixed(1)}%`).join(', ')}`);
}
