// Argument checks shared by the public API. Every misuse message has one shape:
// "Expected <what> for `<name>` but received <value>".

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return `'${value.length > 40 ? `${value.slice(0, 37)}...` : value}'`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (value instanceof RegExp) return String(value);
  const name = (value as object).constructor?.name;
  return name && name !== 'Object' ? `a ${name}` : 'an object';
}

export function typeError(what: string, name: string, value: unknown): TypeError {
  return new TypeError(`Expected ${what} for \`${name}\` but received ${describe(value)}`);
}

export function rangeError(what: string, name: string, value: unknown): RangeError {
  return new RangeError(`Expected ${what} for \`${name}\` but received ${describe(value)}`);
}

export function checkInteger(value: unknown, name: string, min: number, what = 'an integer'): number {
  if (typeof value !== 'number') throw typeError(what, name, value);
  if (!Number.isSafeInteger(value) || value < min) throw rangeError(what, name, value);
  return value;
}

export function checkPositiveInteger(value: unknown, name: string): number {
  return checkInteger(value, name, 1, 'a positive integer');
}

export function checkFiniteNumber(value: unknown, name: string): number {
  if (typeof value !== 'number') throw typeError('a finite number', name, value);
  if (!Number.isFinite(value)) throw rangeError('a finite number', name, value);
  return value;
}

export function checkPositiveNumber(value: unknown, name: string): number {
  const n = checkFiniteNumber(value, name);
  if (n <= 0) throw rangeError('a positive number', name, n);
  return n;
}

export function checkString(value: unknown, name: string): string {
  if (typeof value !== 'string' || value.length === 0) throw typeError('a non-empty string', name, value);
  return value;
}

export function checkOneOf<T extends string>(value: unknown, name: string, allowed: readonly T[]): T {
  if (typeof value !== 'string') throw typeError(`one of ${allowed.map((a) => `'${a}'`).join(', ')}`, name, value);
  if (!allowed.includes(value as T))
    throw rangeError(`one of ${allowed.map((a) => `'${a}'`).join(', ')}`, name, value);
  return value as T;
}

/** Options must be a plain object whose keys are all known: a typo must not pass silently. */
export function checkOptions<T extends object>(value: unknown, name: string, known: readonly string[]): Partial<T> {
  if (value === undefined) return {};
  const proto = value === null || typeof value !== 'object' ? undefined : Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) throw typeError('an options object', name, value);
  for (const key of Object.keys(value as object))
    if (!known.includes(key))
      throw new TypeError(`Unknown option \`${name}.${key}\`; known options are ${known.map((k) => `\`${k}\``).join(', ')}`);
  return value as Partial<T>;
}

const DEVICE = /^(cpu|cuda(:\d+)?)$/;

export function checkDevice(value: unknown, name: string): string {
  if (typeof value !== 'string') throw typeError("a device ('cpu', 'cuda' or 'cuda:N')", name, value);
  if (!DEVICE.test(value)) throw rangeError("a device ('cpu', 'cuda' or 'cuda:N')", name, value);
  return value;
}
