"""What watching costs a call: no sink, metrics (prometheus_client), traces (OpenTelemetry).

Sync client calls to the fake API on loopback, interleaved, against a bare httpx post of
the same request in the same run. Prints medians and ratios; "off" is the default (no
OTEL_* set, no server): its ratio to bare httpx is the whole client's cost, and the
others' ratios to "off" are what each sink adds.

    python bench/telemetry.py [--calls 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _harness import interleave, med, ms, octave_request, use_temp_data_dir

from octave_tools import OctaveClient, observe
from octave_tools._metrics import Metrics
from octave_tools.testing import FakeAIMLAPI


def tracing_sink() -> observe.Sink:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from octave_tools._tracing import Tracing

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return Tracing(provider.get_tracer("bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    use_temp_data_dir()
    sinks: dict[str, list[observe.Sink]] = {
        "off": [],
        "metrics": [Metrics()],
        "traces": [tracing_sink()],
    }
    with FakeAIMLAPI() as api, httpx.Client() as bare, OctaveClient(
        api_key=api.api_key, base_url=api.base_url, engine="aimlapi", ledger=False
    ) as client:
        url, headers, body = octave_request(api.api_key, api.base_url)

        def with_sinks(chosen: list[observe.Sink]):  # type: ignore[no-untyped-def]
            def run() -> None:
                observe.SINKS[:] = chosen
                with observe.observed_call("text_to_speech") as record:
                    record.finish(client.synthesize("The quick brown fox jumps over the lazy dog."))

            return run

        def httpx_post() -> None:
            observe.SINKS[:] = []
            bare.post(url, headers=headers, content=body).raise_for_status()

        variants = {"bare httpx": httpx_post, **{k: with_sinks(v) for k, v in sinks.items()}}
        times = interleave(variants, args.calls)
    observe.SINKS[:] = []
    base, off = med(times["bare httpx"]), med(times["off"])
    print(f"{'variant':<12} {'median':>12} {'vs off':>8} {'vs bare':>8}")
    for name in variants:
        m = med(times[name])
        print(f"{name:<12} {ms(m):>12} {m / off:>7.3f}x {m / base:>7.3f}x")


if __name__ == "__main__":
    main()
