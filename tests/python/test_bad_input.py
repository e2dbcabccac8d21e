"""Bad checkpoints and arguments give one clear error line and a non-zero exit, never a crash.

The cases live in test_engine_vs_reference.py; this file runs only them, so that the sanitizer
build (scripts/test.sh, ctest -R bad_input) checks the error paths under ASan/UBSan quickly.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_engine_vs_reference as T  # noqa: E402

if __name__ == "__main__":
    T.WORK = T.WORK + "-bad-input"  # not shared with test_engine_vs_reference running in parallel
    os.makedirs(T.WORK, exist_ok=True)
    T.test_bad_inputs()
    print(f"{T.RESULTS['passed']} passed, {T.RESULTS['failed']} failed")
    sys.exit(1 if T.RESULTS["failed"] or not T.RESULTS["passed"] else 0)
