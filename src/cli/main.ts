#!/usr/bin/env node
import { Command, CommanderError } from 'commander';

import { TorchError } from '../errors';
import { runDemo } from './demo';
import { runInspect } from './inspect';

const program = new Command()
  .name('torchlite')
  .description('Load, inspect and fine-tune TorchScript models.')
  .exitOverride()
  .showHelpAfterError();

program
  .command('inspect')
  .description('print the module table, the kind of archive and its metadata')
  .argument('<model>', 'a TorchScript .pt file')
  .option('--json', 'print machine-readable JSON')
  .addHelpText('after', '\nExample:\n  torchlite inspect models/fashion-cnn.pt')
  .action(runInspect);

program
  .command('demo')
  .description('classify Fashion-MNIST test images with the shipped pretrained model')
  .option('--count <n>', 'number of test images to classify', '6')
  .option('--data-dir <dir>', 'folder with the Fashion-MNIST IDX files', '/usr/share/datasets/fashion-mnist')
  .addHelpText('after', '\nExample:\n  torchlite demo --count 10')
  .action(runDemo);

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : 2);
    const coded = error instanceof TorchError ? ` [${error.code}]` : '';
    console.error(`torchlite: ${(error as Error).message}${coded}`);
    process.exit(error instanceof TypeError || error instanceof RangeError ? 2 : 1);
  }
}

void main();
