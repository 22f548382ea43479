"""Cost and capacity (method §4): $/1M tokens, $/request, workers for a monthly volume.

All figures derive from one measured throughput (tokens per second of one worker, i.e. one backend
instance under the run's load) and a price per hour for that worker.
"""

from __future__ import annotations

import math

from analysis.results import Capacity, Cost

__all__ = ["SECONDS_PER_MONTH", "cost_block", "usd_per_million", "workers_for"]

#: 30 days, the month method §4 plans capacity for.
SECONDS_PER_MONTH = 2_592_000


def usd_per_million(tokens_per_s: float, usd_per_hour: float) -> float:
    """$ per 1M tokens: seconds for 1M tokens, in hours, times the hourly price."""
    if tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be positive")
    return 1e6 / tokens_per_s / 3600 * usd_per_hour


def workers_for(tokens_per_month: float, tokens_per_s: float, burst_factor: float = 1.0) -> float:
    """Workers needed for a monthly token volume: mean load ÷ per-worker throughput × burst factor."""
    if tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be positive")
    return tokens_per_month / SECONDS_PER_MONTH / tokens_per_s * burst_factor


def cost_block(
    *,
    output_tok_s: float | None,
    total_tok_s: float | None,
    prompt_tokens_mean: float | None,
    output_tokens_mean: float | None,
    usd_per_hour: float | None,
    tokens_per_month: float | None = None,
    burst_factor: float = 1.0,
    joules_per_token: float | None = None,
) -> Cost | None:
    """Cost and capacity figures for one scenario; None without a price or a throughput.

    ``total_tok_s`` (prompt + output tokens per second of the run's window) prices the request's whole
    token mix, as method §4's cost_per_request does; ``output_tok_s`` prices generated tokens alone.
    """
    if usd_per_hour is None or not output_tok_s:
        return None
    per_1m = usd_per_million(total_tok_s, usd_per_hour) if total_tok_s else None
    out = Cost(
        output_tok_s=output_tok_s,
        usd_per_1m_output_tokens=usd_per_million(output_tok_s, usd_per_hour),
        usd_per_1m_tokens=per_1m,
        usd_per_request=None,
        capacity=None,
        kwh_per_1m_output_tokens=None,
        usd_per_hour=usd_per_hour,
    )
    if per_1m is not None and prompt_tokens_mean is not None and output_tokens_mean:
        tokens = prompt_tokens_mean + output_tokens_mean
        out.usd_per_request = tokens / 1e6 * per_1m
        out.tokens_per_request = tokens
    if tokens_per_month:
        rate = total_tok_s or output_tok_s
        workers = workers_for(tokens_per_month, rate, burst_factor)
        out.capacity = Capacity(
            tokens_per_month=tokens_per_month,
            burst_factor=burst_factor,
            tokens_per_s_per_worker=rate,
            workers=workers,
            workers_whole=math.ceil(workers - 1e-9),
        )
    if joules_per_token is not None:
        out.kwh_per_1m_output_tokens = joules_per_token * 1e6 / 3.6e6
    return out
