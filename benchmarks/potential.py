"""GMNN energy+forces cost vs system size; prints one JSON object (same as `lotf bench potential`)."""

import json
import sys

from lotf.bench import potential_benchmark

if __name__ == "__main__":
    print(json.dumps(potential_benchmark(quick="--quick" in sys.argv)))
