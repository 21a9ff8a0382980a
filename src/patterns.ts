// Name patterns for parameters and modules: a dotted path prefix (`layer4`), a glob
// (`layer4.*.conv*`, `**` spans dots), a RegExp, or an array of them.
import { typeError } from './validate';

/** A module or parameter path prefix, a glob, a RegExp, or an array of them. */
export type Pattern = string | RegExp | readonly (string | RegExp)[];

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split('**')
    .map((part) => part.replace(/[.+^${}()|[\]\\?]/g, '\\$&').replace(/\*/g, '[^.]*'))
    .join('.*');
  // A glob names a module as readily as a parameter, so it also matches everything below it.
  return new RegExp(`^${body}(\\.|$)`);
}

export function compilePattern(pattern: Pattern, name = 'pattern'): (path: string) => boolean {
  const parts = Array.isArray(pattern) ? pattern : [pattern];
  if (parts.length === 0) throw typeError('a non-empty pattern array', name, pattern);
  const tests = parts.map((part, i) => {
    if (part instanceof RegExp) return (path: string) => { part.lastIndex = 0; return part.test(path); };
    if (typeof part !== 'string' || part.length === 0)
      throw typeError('a path prefix, glob, RegExp or an array of them', Array.isArray(pattern) ? `${name}[${i}]` : name, part);
    if (part.includes('*')) {
      const regexp = globToRegExp(part);
      return (path: string) => regexp.test(path);
    }
    return (path: string) => path === part || path.startsWith(`${part}.`);
  });
  return (path) => tests.some((test) => test(path));
}

export function describePattern(pattern: Pattern): string {
  return (Array.isArray(pattern) ? pattern : [pattern]).map(String).join(', ');
}
