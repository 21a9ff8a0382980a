// Writes lib/index.mjs: an ESM face over the CommonJS build, so `import` and `require`
// share one instance of the addon and of classes like TorchError (no dual-package hazard).
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';

const require = createRequire(import.meta.url);
const names = Object.keys(require('../lib/index.js')).filter((name) => name !== '__esModule').sort();
writeFileSync(
  new URL('../lib/index.mjs', import.meta.url),
  `import cjs from './index.js';\nexport const { ${names.join(', ')} } = cjs;\nexport default cjs;\n`,
);
writeFileSync(new URL('../lib/index.d.mts', import.meta.url), "export * from './index.js';\n");
