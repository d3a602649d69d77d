"""`llama-sft templates`: list the chat templates and show how each renders a sample."""

from __future__ import annotations


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "templates",
        help="list chat templates with a sample rendering",
        formatter_class=formatter(),
        description="List the built-in chat templates and show each one's rendering of a short "
        "conversation, supervised part marked with «». Pass a name or a .yaml/.jinja file to "
        "show just that one (this also validates your own template file).",
    )
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--jinja", action="store_true", help="also print the HF chat_template (Jinja) it exports")
    p.set_defaults(func=cmd_templates)


def cmd_templates(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    from llama_sft.data.messages import Message
    from llama_sft.data.templates import BUILTIN, get_template

    console = Console(highlight=False)
    sample = [
        Message("user", "Hi!"),
        Message("assistant", "Hello."),
        Message("user", "2+2?"),
        Message("assistant", "4"),
    ]
    names = [args.name] if args.name else list(BUILTIN)
    for name in names:
        template = get_template(name)
        rendered = template.render(sample)
        marked, last = [], 0
        for s, e in rendered.spans:
            marked += [rendered.text[last:s], "«", rendered.text[s:e], "»"]
            last = e
        marked.append(rendered.text[last:])
        console.print(f"[bold]{escape(template.name)}[/] — {escape(template.description)}")
        console.print("".join(marked), markup=False)
        console.print(f"[dim]stop strings: {escape(str(list(template.stop())))}[/]\n")
        if args.jinja:
            console.print(template.to_jinja(), markup=False)
    if not args.name:
        console.print(
            "Also: 'tokenizer' (the tokenizer's own chat_template) or your own .yaml/.jinja file, "
            "e.g. `llama-sft templates my_template.yaml`."
        )
    return 0
