// Prints "N passed, N failed[, N skipped]" summed over vitest JSON reports (the fast and the
// slow suite); fails when a report is missing or no test ran.
import { readFileSync } from 'node:fs';

const paths = process.argv.length > 2 ? process.argv.slice(2) : ['.vitest-report.json'];
const total = { passed: 0, failed: 0, skipped: 0 };
let missing = false;
for (const path of paths) {
  try {
    const report = JSON.parse(readFileSync(path, 'utf8'));
    total.passed += report.numPassedTests;
    total.failed += report.numFailedTests;
    total.skipped += report.numPendingTests + report.numTodoTests;
  } catch (error) {
    console.error(`no vitest report at ${path}: ${error.message}`);
    missing = true;
  }
}
console.log(`${total.passed} passed, ${total.failed} failed${total.skipped ? `, ${total.skipped} skipped` : ''}`);
process.exit(!missing && total.passed > 0 && total.failed === 0 ? 0 : 1);
