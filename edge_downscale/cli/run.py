"""`run` and `chat`: answer prompts with a bundle; the generation flags are GenerationConfig's fields."""
from __future__ import annotations

import dataclasses
import sys

import click

from ._options import _apply, _echo_json, _key_values, _option_value, config_option

_GENERATION = "edge_downscale.runtime.generation:GenerationConfig"  # imports numpy: defaults read lazily

# One flag per GenerationConfig field (``_generation_config`` reads them back by field name).
_GENERATION_OPTIONS = [
    config_option(_GENERATION, "max_tokens", type=int, help="Most tokens to generate."),
    config_option(_GENERATION, "temperature", type=float, help="0 = greedy."),
    config_option(_GENERATION, "top_k", type=int, help="Sample from the k most likely (0 = off)."),
    config_option(_GENERATION, "top_p", type=float, help="Nucleus sampling mass (1 = off)."),
    config_option(_GENERATION, "stop", multiple=True, show_default=False, help="Stop at this string (not included). Repeat."),
    config_option(_GENERATION, "seed", type=int, show_default=False, help="Sampling seed (reproducible output)."),
    config_option(_GENERATION, "overflow", choices=["truncate", "error"],
                  help="A prompt longer than the context: drop its oldest tokens, or refuse."),
    click.option("--strategy-option", "strategy_options", multiple=True, metavar="KEY=VALUE",
                 help="Override a strategy option for this run (JSON value). Repeat."),
]


def _generation_options(f):
    return _apply(_GENERATION_OPTIONS, f)


def _generation_config(kw):
    """The GenerationConfig of the ``_generation_options`` flags (one flag per config field)."""
    from ..runtime.generation import GenerationConfig

    return GenerationConfig.from_dict({f.name: kw[f.name] for f in dataclasses.fields(GenerationConfig)})


def _load_ensemble(bundle_path, strategy_options):
    from ..runtime import Ensemble

    return Ensemble.load(bundle_path, strategy_options={k: _option_value(v) for k, v in
                                                        _key_values(strategy_options, "KEY=VALUE").items()})


def _usage_line(resp) -> str:
    u = resp.usage
    parts = [f"{', '.join(resp.members)}", resp.reason, f"{u.prompt_tokens}+{u.completion_tokens} tokens"]
    if u.ttft_s is not None:
        parts.append(f"ttft {u.ttft_s * 1e3:.0f} ms")
    parts.append(f"{u.latency_s:.2f} s")
    if u.tokens_per_s:
        parts.append(f"{u.tokens_per_s:.1f} tok/s")
    if u.joules is not None:
        parts.append(f"{u.joules:.2f} J ({u.energy_source})")
    if u.grams_co2 is not None:
        parts.append(f"{u.grams_co2 * 1e3:.3f} mg CO2")
    if u.truncated_tokens:
        parts.append(f"{u.truncated_tokens} prompt tokens truncated")
    for f in resp.fallbacks:
        parts.append(f"fallback: {f['error']}")
    return "[" + " | ".join(parts) + "]"


def _stream(ens, prompt, kw, as_json: bool):
    """Print a response (streamed unless --json); return it."""
    if as_json:
        resp = ens.generate(prompt, _generation_config(kw))
        _echo_json(resp.to_dict())
        return resp
    resp = None
    for chunk in ens.generate(prompt, _generation_config(kw), stream=True):
        if chunk.restart:
            click.echo("\n[a member failed mid-answer; restarting with the next one]", err=True)
        if chunk.text:
            click.echo(chunk.text, nl=False)
        resp = chunk.final or resp
    click.echo()
    click.echo(_usage_line(resp), err=True)
    return resp


@click.command("run", short_help="Answer one prompt with a bundle (streams tokens).")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.argument("prompt")
@click.option("--chat", "as_chat", is_flag=True, help="Send PROMPT as a user chat message (model's chat template).")
@click.option("--system", default=None, help="A system message (implies --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole response (text, members, reason, usage) as JSON.")
@_generation_options
def run_cmd(bundle_path, prompt, as_chat, system, as_json, **kw):
    """Answer PROMPT with the bundle's strategy; usage (tokens, latency, joules, source) goes to stderr."""
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.BadParameter("the prompt is empty")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    with _load_ensemble(bundle_path, kw.pop("strategy_options")) as ens:
        _stream(ens, messages if (as_chat or system) else prompt, kw, as_json)


@click.command("chat", short_help="Chat with a bundle in the terminal.")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option("--system", default=None, help="A system message.")
@click.option("--json", "as_json", is_flag=True, help="Print each response as JSON.")
@_generation_options
def chat_cmd(bundle_path, system, as_json, **kw):
    """An interactive loop: each line is a user message, answered with the conversation so far.

    Empty line or Ctrl-D quits; /reset forgets the conversation.
    """
    interactive = sys.stdin.isatty()
    messages = [{"role": "system", "content": system}] if system else []
    with _load_ensemble(bundle_path, kw.pop("strategy_options")) as ens:
        while True:
            try:
                line = input("> ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not line or not line.strip():
                break
            line = line.rstrip("\n")
            if line.strip() == "/reset":
                messages = messages[:1] if system else []
                continue
            messages.append({"role": "user", "content": line})
            resp = _stream(ens, messages, kw, as_json)
            messages.append({"role": "assistant", "content": resp.text or ""})
