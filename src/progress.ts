// Training progress: a live bar on a terminal, one plain line per epoch elsewhere.
import { MultiBar, Presets } from 'cli-progress';

import type { Callback, EpochRecord } from './fit';

function epochLine(r: EpochRecord): string {
  const val = r.val ? `  val loss ${r.val.loss?.toFixed(4)}  val acc ${((r.val.accuracy ?? 0) * 100).toFixed(1)}%` : '';
  const acc = r.trainAccuracy === undefined ? '' : `  acc ${(r.trainAccuracy * 100).toFixed(1)}%`;
  return `epoch ${r.epoch + 1} (stage ${r.stage})  loss ${r.trainLoss.toFixed(4)}${acc}${val}  lr ${r.lr.at(-1)?.toExponential(2)}  ${r.seconds.toFixed(1)}s`;
}

/** A progress callback; `label` prefixes each line. Quiet when `enabled` is false (--json). */
export function progressBar(options: { label?: string; enabled?: boolean; batchSize?: number } = {}): Callback {
  const enabled = options.enabled ?? true;
  const tty = process.stderr.isTTY === true;
  let bars: MultiBar | null = null;
  let bar: ReturnType<MultiBar['create']> | null = null;
  let started = 0;
  return {
    name: 'progressBar',
    rankZeroOnly: true,
    observesBatches: true,
    onBatchEnd(_ctx, e) {
      if (!enabled || !tty) return;
      if (e.batch === 0) {
        bars ??= new MultiBar({ format: '{label} epoch {epoch} [{bar}] {value}/{total} loss {loss} acc {accuracy} {rate} img/s ETA {eta}s', hideCursor: true, stream: process.stderr }, Presets.shades_classic);
        bar = bars.create(e.batches, 0, {});
        started = Date.now();
      }
      const seconds = (Date.now() - started) / 1000;
      bar?.update(e.batch + 1, { label: options.label ?? '', epoch: e.epoch + 1, loss: e.loss.toFixed(4), accuracy: e.accuracy === undefined ? '-' : `${(e.accuracy * 100).toFixed(1)}%`, rate: seconds > 0 ? Math.round(((e.batch + 1) * (options.batchSize ?? 1)) / seconds) : 0 });
    },
    onLrTrial(trial, index, count) {
      if (!enabled) return;
      const score = trial.accuracy === undefined ? `loss ${trial.loss.toFixed(4)}` : `acc ${(trial.accuracy * 100).toFixed(1)}%  loss ${trial.loss.toFixed(4)}`;
      process.stderr.write(`${options.label ? `${options.label} ` : ''}lr trial ${index + 1}/${count}  lr ${trial.lr.toExponential(2)} ${trial.bnPolicy}  held-out ${score}${trial.beatsChance === false ? '  at chance' : ''}\n`);
    },
    onEpochEnd(_ctx, record) {
      if (!enabled) return;
      if (bars) {
        bars.stop();
        bars = null;
      }
      process.stderr.write(`${options.label ? `${options.label} ` : ''}${epochLine(record)}\n`);
    },
  };
}
