// Flag values arrive as strings; misuse gets the library's one message shape.
import { rangeError } from '../validate';

export function intFlag(value: string, name: string, min = 1): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) throw rangeError(min === 1 ? 'a positive integer' : `an integer ≥ ${min}`, name, value);
  return n;
}

export function numberFlag(value: string, name: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw rangeError('a positive number', name, value);
  return n;
}

export function choiceFlag<T extends string>(value: string, name: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw rangeError(`one of ${allowed.join(', ')}`, name, value);
  return value as T;
}

/** The flags every demo takes. */
export interface DemoBaseFlags {
  budget?: string;
  epochs?: string;
  dataDir?: string;
  out: string;
  quick?: boolean;
  json?: boolean;
}
