"""`llama-sft chat`: talk to a run in the terminal, replies streamed token by token.

The prompt is the run's training template (read back from the run directory) with the
generation prompt; replies stop at EOS or the template's stop strings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .eval_cmd import add_model_arguments, add_sampling_arguments

HELP = "commands: /system TEXT (set the system message and start over), /reset (start over), /exit"


@dataclass
class ChatSession:
    """The conversation so far; `messages()` is what the template renders."""

    system: str | None = None
    history: list = field(default_factory=list)  # Message objects, user/assistant alternating

    def messages(self, user: str | None = None) -> list:
        from llama_sft.data.messages import Message

        head = [Message("system", self.system)] if self.system is not None else []
        return head + self.history + ([Message("user", user)] if user is not None else [])

    def prompt(self, template, tokenizer, user: str) -> str:
        from llama_sft.generation import build_prompt

        return build_prompt(template, tokenizer, self.messages(user))

    def add_turn(self, user: str, reply: str) -> None:
        from llama_sft.data.messages import Message

        self.history += [Message("user", user), Message("assistant", reply)]

    def reset(self) -> None:
        self.history = []


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
    add_sampling_arguments(p, max_new_tokens=256)
    p.add_argument(
        "--show_prompt", action="store_true", help="print each rendered prompt (to stderr) before the reply"
    )
    p.set_defaults(func=cmd_chat)


def reply(model, tokenizer, template, session: ChatSession, user: str, args, out) -> str:
    from llama_sft.generation import ReplyStream, SamplingParams

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    if args.show_prompt:
        print(session.prompt(template, tokenizer, user), file=sys.stderr, flush=True)
    pieces = []
    for piece in ReplyStream(model, tokenizer, template, session.messages(user), params):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    text = "".join(pieces)
    session.add_turn(user, text)
    return text


def cmd_chat(args) -> int:
    from llama_sft.generation import PromptTooLong, load_for_inference

    model, tokenizer, template = load_for_inference(
        args.model, args.conv_template, merge=args.merge, dtype=args.dtype, device=args.device
    )
    session = ChatSession(system=args.system)
    out = sys.stdout
    if args.prompt is not None:
        reply(model, tokenizer, template, session, args.prompt, args, out)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"llama-sft chat · {args.model} · template {template.name} · {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("user> " if interactive else "")
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
            reply(model, tokenizer, template, session, text, args, out)
        except PromptTooLong as exc:
            print(f"\n[{exc}: /reset to start over]", file=sys.stderr, flush=True)
    return 0
