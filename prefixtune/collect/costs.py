"""The cost columns: what a run spent, as its run.json records it (time, memory, parameters).

Keys double as runs.csv column names; the labels head the Markdown columns, and the notes
explain under each table what a column measures (a resumed run makes the difference between
"fit" and "wall" time matter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FIT_TIME = "fit_time_s"
WALL_TIME = "wall_time_s"
PEAK_GPU = "peak_gpu_mb"
PEAK_RSS = "peak_rss_mb"
STORED = "stored_params"
STORED_PCT = "stored_pct"
TRAINABLE = "trainable_params"
TRAINABLE_PCT = "trainable_pct"

# Display order (after the metrics) and column labels.
COSTS = {
    FIT_TIME: "fit time (s)",
    WALL_TIME: "wall time (s)",
    PEAK_GPU: "peak GPU MiB",
    PEAK_RSS: "peak RSS MiB",
    STORED: "stored params",
    STORED_PCT: "stored %",
    TRAINABLE: "trainable params",
    TRAINABLE_PCT: "trainable %",
}
# Fixed by the setting, not measured: shown without "± 0" when every replicate agrees.
EXACT = (STORED, STORED_PCT, TRAINABLE, TRAINABLE_PCT)
COUNTS = (STORED, TRAINABLE)
NOTES = {
    FIT_TIME: "fit time = the training loop alone (run.json phases_this_segment_s.fit), only "
    "for runs never resumed: a resumed run records the phases of its last segment only",
    WALL_TIME: "wall time = the whole run summed over its segments (wall_time_s: loading, "
    "training, decoding, scoring)",
    PEAK_GPU: "peak GPU MiB = the most CUDA memory allocated at once (main process)",
    PEAK_RSS: "peak RSS MiB = the process's peak resident memory (main process)",
    STORED: "stored = parameters the run saves",
    TRAINABLE: "trainable = parameters it trains",
}


def table_costs(run_costs: Iterable[Mapping[str, float]]) -> list[str]:
    """The cost columns of a table: those any of its runs recorded, in display order.

    One memory column only: the GPU peak when any run had a GPU (its CPU RSS then measures
    the CUDA context and host copies, not the model's needs), else the CPU peak RSS."""
    have = {key for costs in run_costs for key in costs}
    keys = [key for key in COSTS if key in have]
    if PEAK_GPU in keys and PEAK_RSS in keys:
        keys.remove(PEAK_RSS)
    return keys


def notes(keys: Iterable[str]) -> str:
    """One sentence saying what the given cost columns measure."""
    keys = list(keys)
    parts = [NOTES[k] for k in keys if k in NOTES]
    if any(k.endswith("_pct") for k in keys):
        parts.append("% = of the base model's parameters")
    tail = "A cost is the mean over the runs that recorded it (a run without run.json has none)."
    return f"Costs from run.json: {'; '.join(parts)}. {tail}"
