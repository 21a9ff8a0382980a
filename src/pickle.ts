// torch.save state dicts (the zip format of PyTorch 1.6+) without Python: the zip's central
// directory, then the subset of the pickle protocol that `torch.save(model.state_dict())`
// writes. LibTorch's own unpickler turns the OrderedDict of a state dict into None, so it
// cannot read them. Tensors are located, not read: the addon reads their bytes from the zip's
// stored (uncompressed) records on a lane.

import { TorchError } from './errors';
import { readAt, withFile, zipRecords } from './zip';
import type { Dtype } from './tensor';
import type { WeightEntry, WeightsFile } from './weights';

/** torch's storage classes and the dtype each holds. */
const STORAGES: Record<string, Dtype> = {
  FloatStorage: 'float32',
  DoubleStorage: 'float64',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
};
const ELEMENT: Record<Dtype, number> = { float64: 8, float32: 4, float16: 2, bfloat16: 2, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1 };

/** A global a pickle names: `module.name`. */
class Global {
  constructor(readonly name: string) {}
}
/** A storage a tensor views: its record key and dtype. */
interface StorageRef {
  key: string;
  dtype: Dtype;
}
/** A tensor as `_rebuild_tensor_v2` describes it. */
interface TensorRef {
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
}
class Mark {}
const MARK = new Mark();

/**
 * Runs the pickle opcodes a state dict uses (protocol 2, with the protocol 3-5 opcodes
 * torch.save may emit) and returns the top object: nested Maps and arrays with TensorRefs.
 */
function unpickle(data: Buffer, path: string): unknown {
  const stack: unknown[] = [];
  const memo = new Map<number, unknown>();
  let at = 0;
  const popMark = (): unknown[] => {
    const mark = stack.lastIndexOf(MARK);
    const items = stack.splice(mark);
    return items.slice(1);
  };
  const fail = (why: string): never => {
    throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${path}: ${why}; torchlite reads state dicts (torch.save(model.state_dict())), not pickled Python objects`);
  };
  const line = () => {
    const end = data.indexOf(0x0a, at);
    const text = data.toString('utf8', at, end);
    at = end + 1;
    return text;
  };
  const call = (fn: unknown, args: unknown[]): unknown => {
    if (!(fn instanceof Global)) return fail('a REDUCE of something other than a global');
    switch (fn.name) {
      case 'collections.OrderedDict':
        return new Map();
      case 'torch._utils._rebuild_tensor_v2':
      case 'torch._utils._rebuild_tensor': {
        const [storage, offset, shape, stride] = args as [StorageRef, number, number[], number[]];
        return { storage, offset, shape: [...shape], stride: [...stride] } satisfies TensorRef;
      }
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        return args[0];
      default:
        return fail(`it calls ${fn.name}`);
    }
  };
  for (;;) {
    const op = data[at++];
    switch (op) {
      case 0x80: // PROTO
        at += 1;
        break;
      case 0x95: // FRAME
        at += 8;
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x74: // TUPLE
        stack.push(popMark());
        break;
      case 0x85: // TUPLE1
        stack.push([stack.pop()]);
        break;
      case 0x86: // TUPLE2
        stack.push(stack.splice(-2));
        break;
      case 0x87: // TUPLE3
        stack.push(stack.splice(-3));
        break;
      case 0x58: {
        // BINUNICODE
        const n = data.readUInt32LE(at);
        stack.push(data.toString('utf8', at + 4, at + 4 + n));
        at += 4 + n;
        break;
      }
      case 0x8c: {
        // SHORT_BINUNICODE
        const n = data[at];
        stack.push(data.toString('utf8', at + 1, at + 1 + n));
        at += 1 + n;
        break;
      }
      case 0x55: {
        // SHORT_BINSTRING
        const n = data[at];
        stack.push(data.toString('latin1', at + 1, at + 1 + n));
        at += 1 + n;
        break;
      }
      case 0x63: {
        // GLOBAL
        const module = line();
        stack.push(new Global(`${module}.${line()}`));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const [module, name] = stack.splice(-2) as [string, string];
        stack.push(new Global(`${module}.${name}`));
        break;
      }
      case 0x4b: // BININT1
        stack.push(data[at]);
        at += 1;
        break;
      case 0x4d: // BININT2
        stack.push(data.readUInt16LE(at));
        at += 2;
        break;
      case 0x4a: // BININT
        stack.push(data.readInt32LE(at));
        at += 4;
        break;
      case 0x8a: {
        // LONG1
        const n = data[at];
        let value = 0n;
        for (let i = n - 1; i >= 0; i--) value = (value << 8n) | BigInt(data[at + 1 + i]);
        if (n > 0 && data[at + n] & 0x80) value -= 1n << BigInt(8 * n);
        stack.push(Number(value));
        at += 1 + n;
        break;
      }
      case 0x47: // BINFLOAT
        stack.push(data.readDoubleBE(at));
        at += 8;
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x71: // BINPUT
        memo.set(data[at], stack.at(-1));
        at += 1;
        break;
      case 0x72: // LONG_BINPUT
        memo.set(data.readUInt32LE(at), stack.at(-1));
        at += 4;
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, stack.at(-1));
        break;
      case 0x68: // BINGET
        stack.push(memo.get(data[at]));
        at += 1;
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memo.get(data.readUInt32LE(at)));
        at += 4;
        break;
      case 0x51: {
        // BINPERSID: ('storage', storage type, key, location, numel)
        const [kind, type, key] = stack.pop() as [string, Global, string];
        const dtype = type instanceof Global ? STORAGES[type.name.replace(/^torch\./, '')] : undefined;
        if (kind !== 'storage' || !dtype) return fail(`a persistent object ${String(kind)} of ${type instanceof Global ? type.name : typeof type}`);
        stack.push({ key, dtype } satisfies StorageRef);
        break;
      }
      case 0x52: {
        // REDUCE
        const args = stack.pop() as unknown[];
        stack.push(call(stack.pop(), args));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = stack.pop() as unknown[];
        stack.push(call(stack.pop(), args));
        break;
      }
      case 0x62: // BUILD: a state dict's `_metadata` (versions per module), which loading does not need
        stack.pop();
        break;
      case 0x73: {
        // SETITEM
        const [key, value] = stack.splice(-2);
        (stack.at(-1) as Map<unknown, unknown>).set(key, value);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        const dict = stack.at(-1) as Map<unknown, unknown>;
        for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
        break;
      }
      case 0x61: // APPEND
        (stack.at(-2) as unknown[]).push(stack.pop());
        break;
      case 0x65: {
        // APPENDS
        const items = popMark();
        (stack.at(-1) as unknown[]).push(...items);
        break;
      }
      case 0x2e: // STOP
        return stack.pop();
      default:
        return fail(`pickle opcode 0x${op?.toString(16)} at byte ${at - 1}`);
    }
  }
}

/** The tensors of a torch.save file (a state dict, or a checkpoint holding one under `state_dict`/`model`), located in its zip. */
export function readTorchSave(path: string): Promise<WeightsFile> {
  return withFile(path, async (handle, size) => {
    const magic = await readAt(handle, 0, 4);
    if (magic.readUInt32LE(0) !== 0x04034b50)
      throw new TorchError(
        'TORCHLITE_UNSUPPORTED_FORMAT',
        `${path} is in torch.save's legacy (pre-1.6) format, which torchlite does not read; convert it once with Python: torch.save(torch.load(path), path) writes the zip format, or save safetensors`,
      );
    const records = await zipRecords(path, handle, size);
    const pickleName = [...records.keys()].find((name) => name.endsWith('/data.pkl'));
    if (!pickleName) throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} is a zip without data.pkl; it is not a torch.save file`);
    const prefix = pickleName.slice(0, -'data.pkl'.length);
    const pickle = records.get(pickleName)!;
    let top = unpickle(await readAt(handle, pickle.offset, pickle.size), path);
    // Checkpoints often wrap the state dict: {'state_dict': …} or {'model': …}.
    for (const key of ['state_dict', 'model', 'model_state_dict'])
      if (top instanceof Map && !(top.values().next().value as TensorRef | undefined)?.storage && top.get(key) instanceof Map) top = top.get(key);
    if (!(top instanceof Map)) throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${path} holds no state dict (a dict of tensors by name)`);
    const entries: WeightEntry[] = [];
    for (const [name, value] of top) {
      const ref = value as TensorRef;
      if (typeof name !== 'string' || !ref?.storage) continue;
      const record = records.get(`${prefix}data/${ref.storage.key}`);
      if (!record) throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path}: '${name}' views storage ${ref.storage.key}, which the zip lacks`);
      // Only a dense tensor can be read as one run of bytes; state dicts hold nothing else.
      let expected = 1;
      for (let d = ref.shape.length - 1; d >= 0; d--) {
        if (ref.shape[d] !== 1 && ref.stride[d] !== expected) throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${path}: '${name}' is not contiguous in its storage; save .contiguous() tensors`);
        expected *= ref.shape[d];
      }
      const element = ELEMENT[ref.storage.dtype];
      entries.push({ name, file: path, dtype: ref.storage.dtype, shape: ref.shape, offset: record.offset + ref.offset * element, bytes: expected * element });
    }
    return { entries, metadata: {} };
  });
}
