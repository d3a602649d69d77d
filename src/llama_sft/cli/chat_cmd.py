"""`llama-sft chat`: talk to a run in the terminal, replies streamed token by token.

The prompt is the run's training template (read back from the run directory) with the
generation prompt; replies stop at EOS or the template's stop strings.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .eval_cmd import add_model_arguments, add_sampling_arguments

HELP = "commands: /system TEXT (set the system message and start over), /reset (start over), /exit"


@dataclass
class ChatSession:
    """The conversation so far; `messages()` is what the template renders."""

    system: str | None = None
    history: list = field(default_factory=list)  # Message objects, user/assistant alternating
    tools: tuple = ()  # JSON-schema functions (--tools); a reply that calls one waits for its result
    awaiting_result: bool = False

    def messages(self, user: str | None = None) -> list:
        from llama_sft.data.messages import Message

        head = [Message("system", self.system)] if self.system is not None else []
        return head + self.history + ([Message("user", user)] if user is not None else [])

    def prompt(self, template, tokenizer, user: str) -> str:
        from llama_sft.generation import build_prompt

        return build_prompt(template, tokenizer, self.messages(user), self.tools)

    def add_turn(self, user: str | None, reply: str, calls: tuple = ()) -> None:
        from llama_sft.data.messages import Message

        self.history += [Message("user", user)] if user is not None else []
        self.history.append(Message("assistant", reply, tool_calls=tuple(calls)))
        self.awaiting_result = bool(calls)

    def add_tool_result(self, text: str) -> None:
        from llama_sft.data.messages import Message

        self.history.append(Message("tool", text))
        self.awaiting_result = False

    def reset(self) -> None:
        self.history = []
        self.awaiting_result = False


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "chat",
        help="chat with a run in the terminal (streaming)",
        formatter_class=formatter(),
        description="Interactive chat with a trained run (adapter runs load base + adapter) or a "
        "merged model, using the template and stop strings saved with it. " + HELP + ". "
        "--prompt answers one message and exits.",
    )
    add_model_arguments(p)
    p.add_argument("--prompt", default=None, help="answer this one message and exit (non-interactive)")
    p.add_argument("--system", default=None, help="system message (default: the template's, if any)")
    p.add_argument(
        "--tools",
        default=None,
        help="a JSON file with a list of tool schemas (OpenAI's function format): they are rendered with "
        "the run's template; when the model calls one, the call is printed and the next line you type "
        "is the tool's result",
    )
    add_sampling_arguments(p, max_new_tokens=256)
    p.add_argument(
        "--show_prompt", action="store_true", help="print each rendered prompt (to stderr) before the reply"
    )
    p.set_defaults(func=cmd_chat)


def reply(model, tokenizer, template, session: ChatSession, user: str | None, args, out) -> str:
    """Stream the reply to `user` (None: to the tool result just added); with tools, a call is shown
    as `[tool call] name {arguments}` and the session waits for its result."""
    from llama_sft.data.tool_templates import parse_calls, template_style
    from llama_sft.generation import ReplyStream, SamplingParams

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    if args.show_prompt:
        print(session.prompt(template, tokenizer, user), file=sys.stderr, flush=True)
    pieces = []
    stream = ReplyStream(model, tokenizer, template, session.messages(user), params, session.tools)
    for piece in stream:
        pieces.append(piece)
        if not session.tools:  # with tools the reply may be a call: shown once it is complete
            out.write(piece)
            out.flush()
    text = "".join(pieces)
    content, calls = parse_calls(text, template_style(template)) if session.tools else (text, [])
    if session.tools:
        out.write(content if calls else text)
        for call in calls:
            out.write(f"{chr(10) if content else ''}[tool call] {call.name} {json.dumps(call.parsed())}")
    out.write("\n")
    out.flush()
    session.add_turn(user, content if calls else text, tuple(calls))
    return text


def load_tools(path: str | None) -> tuple:
    if path is None:
        return ()
    from llama_sft.data.formats import RecordError
    from llama_sft.data.tools import parse_tools

    try:
        return parse_tools(Path(path).read_text(encoding="utf-8"))
    except (OSError, RecordError) as exc:
        raise SystemExit(f"--tools {path}: {exc}") from None


def cmd_chat(args) -> int:
    from llama_sft.generation import PromptTooLong, load_for_inference

    model, tokenizer, template = load_for_inference(
        args.model, args.conv_template, merge=args.merge, dtype=args.dtype, device=args.device
    )
    session = ChatSession(system=args.system, tools=load_tools(args.tools))
    out = sys.stdout
    if args.prompt is not None:
        reply(model, tokenizer, template, session, args.prompt, args, out)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"llama-sft chat · {args.model} · template {template.name} · {HELP}", file=sys.stderr)
    while True:
        try:
            line = input(("tool> " if session.awaiting_result else "user> ") if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            print("[conversation reset]", file=sys.stderr, flush=True)
            continue
        if text == "/system" or text.startswith("/system "):
            session.system = text[len("/system") :].strip() or None
            session.reset()
            print(
                f"[system message {'set' if session.system else 'cleared'}; conversation reset]",
                file=sys.stderr,
                flush=True,
            )
            continue
        if text.startswith("/"):
            print(f"[unknown command {text.split()[0]}; {HELP}]", file=sys.stderr, flush=True)
            continue
        if interactive:
            out.write("assistant> ")
        try:
            if session.awaiting_result:  # the line is the result of the call just shown
                session.add_tool_result(text)
                reply(model, tokenizer, template, session, None, args, out)
                continue
            reply(model, tokenizer, template, session, text, args, out)
        except PromptTooLong as exc:
            print(f"\n[{exc}: /reset to start over]", file=sys.stderr, flush=True)
    return 0
