"""The trace format's name and versions, its closed vocabularies, and the bounds of every number a trace holds
(sim/trace/FORMAT.md, "Bounds")."""

TRACE_FORMAT = "speed-sim-trace"
TRACE_VERSION = 6
# 5: no quantized-product fields (weights in the activation dtype); 4: no tensor-parallel fields (reads as one
# rank); 3: one record per executed op; 2: no seq, kind, kv, srcs; 1: no deps either
READS_VERSIONS = (1, 2, 3, 4, 5, 6)
DECODERS = ("sequential", "speed")
STAGE_KINDS = ("encoder", "prefill", "decode", "speed")

# What a real run can have. A file beyond these bounds is refused when read, so that no count overflows a float
# in the simulator, no list or loop grows without end, and no value nests past what the parser takes.
MAX_BYTES = 2**50  # bytes one op or weight moves: 1 PiB, hundreds of times the largest device memory
MAX_FLOPS = 2**60  # FLOPs of one op: 1.2e18, twenty minutes of a 1 PFLOP/s device for a single kernel
MAX_ELEMENTS = 2**50  # a tensor dimension, and a shape's elements (its nonzero dimensions' product): each >= 1 byte
MAX_INDEX = 2**31 - 1  # a group, depth, layer, sequence, row count, position, token, exit, stage number, length
MAX_SECONDS = 1e6  # a measured op or stage time: 11.6 days
MIN_SECONDS = 1e-12  # a nonzero measured time below a picosecond is no clock's reading
MAX_EXECUTED = 2**26  # ops a trace executes: 67M (a 70B model decoding 8,192 tokens eagerly executes ~37M)
MAX_STAGES = 2**20  # stage records: 1M (decode steps, plus an encoder and a prefill stage per sequence)
MAX_LINE_BYTES = 2**26  # 64 MiB: one line (the longest, a header listing a model's weights, is 24 kB for T5-Base)
MAX_DEQUANT_OPS = 64  # ALU operations dequantizing one weight for one row: the packed kernels take 1 to 4
MAX_NESTING = 16  # JSON nesting of the header's free-form objects (flips, extra); records nest 3 deep at most

# what the readers say when a file passes MAX_EXECUTED or MAX_STAGES
TOO_MANY_OPS = f"more than {MAX_EXECUTED:,} ops executed (2**26, beyond any real run)"
TOO_MANY_STAGES = f"more than {MAX_STAGES:,} stage records (2**20, beyond any real run)"
