// Joins a group from the environment and prints the outcome as JSON (test/distributed.test.ts).
import torchlite from '../../lib/index.js';

try {
  const group = await torchlite.distributed.init({ initTimeoutMs: Number(process.env.INIT_TIMEOUT_MS) });
  await group.barrier();
  await group.destroy();
  console.log(JSON.stringify({ ok: true }));
} catch (error) {
  console.log(JSON.stringify({ code: error.code, message: error.message }));
}
