// Data-parallel fine-tuning of the shipped CNN on 400 Fashion-MNIST images, one rank per
// process:  npx torchlite run --nproc 2 examples/data-parallel.mjs
import torchlite from 'torchlite';

const { data, distributed: dist, fineTune, checkpoint, loadPretrained, progressBar } = torchlite;
const fixtures = new URL('../test/fixtures/', import.meta.url).pathname;

const group = await dist.init(); // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the launcher
const model = dist.dataParallel(await loadPretrained(new URL('../models/fashion-cnn.pt', import.meta.url).pathname), { group });
const all = await data.idx(`${fixtures}fashion-5to9-train-images.idx.gz`, `${fixtures}fashion-5to9-train-labels.idx.gz`, { mean: 0.286, std: 0.353 });
const { train, val } = data.split(data.subset(all, { classes: [5, 6, 7, 8, 9], perClass: 80 }), { val: 0.2, seed: 0 });
const history = await fineTune(model, {
  train: data.loader(train, { batchSize: 16, shuffle: true, distributed: group }), // this rank's shard, as DistributedSampler
  val: data.loader(val, { batchSize: 64, distributed: group }),                    // metrics summed over the ranks
  numClasses: 5,                                 // a new head on every rank; rank 0's is broadcast before the first step
  callbacks: [progressBar(), checkpoint({ dir: 'ddp-checkpoints' })],              // rank 0 only
});
if (group.rank === 0) console.log(`validation accuracy ${(history.at(-1).val.accuracy * 100).toFixed(1)}% on ${group.worldSize} ranks`);
await group.destroy();
