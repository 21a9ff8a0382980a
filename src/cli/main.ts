#!/usr/bin/env node
import { Command, CommanderError } from 'commander';

import { pull, TorchError, torchVersion } from '..';
import { runDemo } from './demo';
import { runDetectDemo } from './demo-detect';
import { runTextDemo } from './demo-text';
import { choiceFlag } from './flags';
import { runEval } from './evaluate';
import { runFinetune } from './finetune';
import { runInspect } from './inspect';
import { runPredict } from './predict';
import { runRanks } from './run';

const program = new Command()
  .name('torchlite')
  .description('Load, inspect, fine-tune, evaluate and run TorchScript models.')
  .version(`torchlite ${(require('../../package.json') as { version: string }).version} (LibTorch ${torchVersion})`, '--version')
  .exitOverride()
  .enablePositionalOptions() // `run` hands everything after its script to the script
  .showHelpAfterError();

const SIZE = ['--size <px>', 'input side in pixels, for a model whose metadata has no input spec (or to override it)'] as const;
const CHANNELS = ['--channels <1|3>', 'input channels, with --size (default 3; ImageNet mean/std, 0.5 for grey)'] as const;
const TEXT = ['--text', 'the data is labelled text (implied by a .jsonl, .json, .ndjson or .csv file)'] as const;
const TOKENIZER = ['--tokenizer <file>', "a tokenizer.json, for a text model whose metadata has none (implies --text)"] as const;
const SKIP_BAD_ROWS = ['--skip-bad-rows', 'skip unreadable or unlabelled rows of a text file with a warning, instead of failing'] as const;

program
  .command('inspect')
  .description('print the module table, the detected classifier head, the kind of archive and its metadata')
  .argument('<model>', 'a TorchScript .pt file, torchvision:NAME or hf:owner/name')
  .option('--weights <name|file|none>', "a torchvision: model's weights: DEFAULT, a name such as IMAGENET1K_V2, a .safetensors or .pth file, or none", 'DEFAULT')
  .option('--json', 'print machine-readable JSON')
  .addHelpText('after', '\nExamples:\n  torchlite inspect models/fashion-cnn.pt\n  torchlite inspect torchvision:resnet50 --weights none')
  .action(runInspect);

program
  .command('pull')
  .description("download a model's files into the caches Python uses (torch.hub's, the Hub's), for a machine that will run offline")
  .argument('<model>', 'torchvision:NAME or hf:owner/name[@revision]')
  .option('--weights <name>', "a torchvision: model's weights: DEFAULT or a name such as IMAGENET1K_V2", 'DEFAULT')
  .addHelpText('after', '\nExamples:\n  torchlite pull torchvision:resnet50\n  torchlite pull hf:timm/resnet50.a1_in1k')
  .action(async (model: string, flags: { weights: string }) => {
    for (const file of await pull(model, { weights: flags.weights })) console.log(file);
  });

program
  .command('finetune')
  .description('replace the head, train it with the body frozen, then unfreeze and train everything')
  .requiredOption('--model <file>', 'pretrained model: a TorchScript .pt file, torchvision:NAME or hf:owner/name')
  .option('--weights <name|file|none>', "a torchvision: model's weights: DEFAULT, a name such as IMAGENET1K_V2, a .safetensors or .pth file, or none", 'DEFAULT')
  .requiredOption('--data <dir|fashion-mnist|file>', 'a folder with one subfolder per class, fashion-mnist, or labelled texts (JSONL or CSV with text and label fields)')
  .option('--val <dir|file>', 'validation folder or text file (default: 10% of --data, or the fashion-mnist test set)')
  .option('--classes <list>', 'with fashion-mnist: class indices to keep, e.g. 5,6,7,8,9; with --task segment: the class names in mask-value order')
  .option('--per-class <n>', 'labelled images per class (a small budget)')
  .option('--epochs <n>', 'epochs after unfreezing (default: 3, more when --freeze-epochs and --epochs are both unset and the data is small: at least 128 steps in all)')
  .option('--freeze-epochs <n>', 'epochs training only the head (default: 1, scaled as --epochs)')
  .option('--lr <lr|auto>', 'peak learning rate of the head, or auto: read off an LR range test of the new head (default: 1e-2)')
  .option('--lr-search', 'choose the lr by trial: 5 to 8 lrs around --lr, each fine-tuned on held-out folds (5 to 40 whole runs; it says how many first)')
  .option('--augment <none|light|default>', 'image folders: light crops 60-100% and never flips; default is torchvision\'s crop 8-100% and flip (default: light for images over 32 px, else none)')
  .option('--batch-size <n>', 'samples per step', '32')
  .option('--unfreeze <stages>', "comma-separated stages, e.g. layer4,layer3,all (default: all at once)")
  .option('--device <device>', 'cpu, cuda or cuda:N', 'cpu')
  .option(...SIZE)
  .option(...CHANNELS)
  .option(...TEXT)
  .option(...TOKENIZER)
  .option(...SKIP_BAD_ROWS)
  .option('--seed <n>', 'seeds the head, dropout, sampling, shuffling and augmentation', '0')
  .option('--cache-features <auto|on|off>', 'train the head-only epochs on cached backbone features where that is exact', 'auto')
  .option('--bn-policy <auto|frozen-eval|eval|train>', "BatchNorm while the body trains; auto: the model's, and with --lr-search the trials also try eval (every BatchNorm layer on its running statistics) at the lower lrs", 'auto')
  .option('--checkpoint-dir <dir>', 'write a checkpoint after every epoch (epoch-N.ckpt, best.ckpt)')
  .option('--resume <ckpt>', 'continue an interrupted run from one of its checkpoints')
  .option('--task <classify|detect|segment>', 'detect: --data is a COCO .json or a VOC folder, the model a torchvision R-CNN; segment: --data is an image folder, with --masks and --classes', 'classify')
  .option('--masks <dir>', 'with --task segment: mask PNGs of class indices (255 ignored), named as the images')
  .option('--out <file>', 'where to save the fine-tuned model', 'finetuned.pt')
  .option('--report <file>', 'write an HTML report with curves and the confusion matrix')
  .option('--json', 'print machine-readable results')
  .addHelpText('after', '\nExamples:\n  torchlite finetune --model models/fashion-cnn.pt --data fashion-mnist --classes 5,6,7,8,9 --per-class 100 --out ft.pt\n  torchlite finetune --model resnet18.pt --data ./photos --epochs 5 --report report.html\n  torchlite finetune --model models/fortunes-encoder.pt --data reviews.jsonl --out reviews.pt')
  .action(runFinetune);

program
  .command('eval')
  .description('print loss, accuracy, macro F1 and the confusion matrix on a dataset')
  .argument('<model>', 'a TorchScript .pt file')
  .requiredOption('--data <dir|fashion-mnist|file>', 'a folder with one subfolder per class, fashion-mnist (test split), or labelled texts (JSONL or CSV)')
  .option('--classes <list>', 'with fashion-mnist: class indices to keep')
  .option('--batch-size <n>', 'samples per batch', '256')
  .option(...SIZE)
  .option(...CHANNELS)
  .option(...TEXT)
  .option(...TOKENIZER)
  .option(...SKIP_BAD_ROWS)
  .option('--json', 'print machine-readable results')
  .addHelpText('after', '\nExample:\n  torchlite eval ft.pt --data fashion-mnist --classes 5,6,7,8,9')
  .action(runEval);

program
  .command('predict')
  .description('print the top labels of images or texts, with class names from the model metadata')
  .argument('<model>', 'a TorchScript .pt file')
  .argument('[inputs...]', 'image files; for a text model, texts (none or - reads one a line from stdin)')
  .option('--top <k>', 'labels per input', '3')
  .option('--threshold <score>', 'a detector: the lowest score of a box to print', '0.5')
  .option('--masks-dir <dir>', 'a segmentation model: where to write each image\'s mask PNG (<name>.mask.png)', '.')
  .option(...SIZE)
  .option(...CHANNELS)
  .option('--text', 'the inputs are texts (implied by a model with a tokenizer in its metadata)')
  .option(...TOKENIZER)
  .option('--json', 'print machine-readable results')
  .addHelpText('after', '\nExamples:\n  torchlite predict ft.pt shoe.png bag.jpg\n  torchlite predict reviews.pt "the soup was cold"\n  cut -f2 tickets.tsv | torchlite predict tickets.pt --json')
  .action(runPredict);

program
  .command('demo')
  .description('images (default): fine-tune the shipped CNN on Fashion-MNIST classes 5-9; text: fine-tune the shipped text encoder to tell the language of fortunes it has never read; each compared with head-only and from-scratch training; detect: a small detector pretrained on scenes of five Fashion-MNIST classes, fine-tuned on five others against training it from scratch')
  .argument('[kind]', 'images, text or detect', 'images')
  .option('--budget <n>', 'labelled training samples (default: 100 images, 8 texts a language, 120 scenes)')
  .option('--epochs <n>', 'epochs per approach (default: 12 for images, 10 for text, 25 for detect)')
  .option('--target <accuracy>', 'test accuracy for the steps-to-target column', '0.8')
  .option('--model <file>', 'text: the encoder to fine-tune, one scripts/text/pretrain.mjs wrote (default: models/fortunes-encoder.pt)')
  .option('--data-dir <dir>', 'folder with the Fashion-MNIST IDX files or the fortune files (default: the Debian packages)')
  .option('--out <file>', 'where to save the fine-tuned model', 'demo-finetuned.pt')
  .option('--report <file>', 'HTML report', 'demo-report.html')
  .option('--quick', 'a small, fast run (200 images, 5 epochs, 500 test images; text: 3 epochs, 20 test texts a language)')
  .option('--json', 'print machine-readable results')
  .addHelpText('after', '\nExamples:\n  torchlite demo --budget 250 --epochs 8\n  torchlite demo text\n  torchlite demo detect --quick')
  .action((kind: string, flags) => {
    const which = choiceFlag(kind, 'kind', ['images', 'text', 'detect'] as const);
    return which === 'text' ? runTextDemo(flags) : which === 'detect' ? runDetectDemo(flags) : runDemo(flags);
  });

program
  .command('run')
  .description("start the ranks of a data-parallel training script on this machine, with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK)")
  .argument('<script>', 'the Node.js script every rank runs')
  .argument('[args...]', "the script's own arguments")
  .option('--nproc <n>', 'ranks on this machine', '1')
  .option('--nnodes <n>', 'machines in the job', '1')
  .option('--node-rank <n>', "this machine's index, 0 to nnodes - 1", '0')
  .option('--master-addr <host>', "the address of node 0, where rank 0 serves the rendezvous", '127.0.0.1')
  .option('--master-port <port>', 'its port (default: a free one on a single machine; needed with --nnodes > 1)')
  .passThroughOptions()
  .addHelpText('after', '\nThe first rank to fail stops the others, and its exit code is the launcher\'s.\nExamples:\n  torchlite run --nproc 2 train.mjs --epochs 3\n  torchlite run --nnodes 2 --node-rank 0 --nproc 4 --master-addr 10.0.0.1 --master-port 29500 train.mjs')
  .action((script: string, args: string[], flags) => runRanks(script, args, flags));

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : 2);
    // TorchErrors and misuse TypeErrors both carry torchlite's code.
    const code = error instanceof TorchError || error instanceof TypeError ? (error as { code?: unknown }).code : undefined;
    const coded = typeof code === 'string' ? ` [${code}]` : '';
    console.error(`torchlite: ${(error as Error).message}${coded}`);
    // Misuse (bad flags, bad data) is exit 2; failures inside LibTorch or I/O are 1.
    const misuse = error instanceof TypeError || error instanceof RangeError || (error instanceof TorchError && error.code === 'TORCHLITE_BAD_DATA');
    process.exit(misuse ? 2 : 1);
  }
}

void main();
