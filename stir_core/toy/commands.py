"""`stir toy-train` and `stir toy-control`: typer-ready functions (the CLI registers them)."""

from __future__ import annotations

from pathlib import Path

import typer

from stir_core.toy.recipe import DEFAULT_OUT, Recipe  # light: no torch at CLI start


def toy_train(
    out: Path = typer.Option(DEFAULT_OUT, help="output directory (HF files + card.json)"),
    seed: int = typer.Option(Recipe.seed, help="training seed (data order and initialisation)"),
    steps: int = typer.Option(Recipe.steps, help="optimizer steps"),
    batch_size: int = typer.Option(Recipe.batch_size, help="sequences per step"),
    n_layers: int = typer.Option(Recipe.n_layers, help="decoder blocks"),
    d_model: int = typer.Option(Recipe.d_model, help="residual width"),
    lr: float = typer.Option(Recipe.lr, help="peak learning rate"),
    planted_share: float = typer.Option(Recipe.planted_share, help="share of `planted` traces per batch"),
    threads: int = typer.Option(
        1, help="torch CPU threads; 1 reproduces the shipped weights bit for bit (0: torch's default, faster)"
    ),
    control: bool = typer.Option(False, help="run `toy-control` afterwards (writes the model card)"),
) -> None:
    """Train the embedded toy reasoner (Llama, character tokenizer) on the planted + plain mixture."""
    import torch

    from stir_core.toy.train import train_toy

    if threads:
        torch.set_num_threads(threads)
    try:
        recipe = Recipe(
            seed=seed,
            steps=steps,
            batch_size=batch_size,
            n_layers=n_layers,
            d_model=d_model,
            lr=lr,
            planted_share=planted_share,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    res = train_toy(out, recipe)
    typer.echo(
        f"trained {res.n_params:,} parameters in {res.wall_s / 60:.1f} min wall / {res.cpu_s / 60:.1f} min "
        f"CPU, final loss {res.final_loss:.4f}; wrote {out}"
    )
    if control:
        from stir_core.toy.control import run_control

        typer.echo(_summary(run_control(out), out))


def toy_control(
    model: Path = typer.Option(DEFAULT_OUT, help="toy model directory"),
    n_eval: int = typer.Option(600, help="held-out `eval` problems per task"),
    n_mine: int = typer.Option(500, help="`mine` problems for the contrast directions"),
    traces_per_problem: int = typer.Option(4, help="writer traces per mine problem"),
    alphas: str = typer.Option("0.5,1,2,4", help="comma list of oracle scales"),
    sampled_n: int = typer.Option(300, help="problems for the T=0.7 sampled accuracy"),
    seed: int = typer.Option(0, help="seed for the writer traces"),
    write: bool = typer.Option(True, help="write card.json, MODEL_CARD.md and control.safetensors"),
) -> None:
    """The testbed's positive control and model card: accuracy, error modes, mode directions, oracle gate."""
    from stir_core.toy.control import run_control

    try:
        alpha_list = tuple(float(a) for a in alphas.split(",") if a.strip())
    except ValueError as err:
        raise typer.BadParameter(f"--alphas {alphas!r}: expected numbers separated by commas") from err
    if not alpha_list:
        raise typer.BadParameter("--alphas needs at least one value")
    try:
        card = run_control(
            model,
            n_eval=n_eval,
            n_mine=n_mine,
            traces_per_problem=traces_per_problem,
            alphas=alpha_list,
            sampled_n=sampled_n,
            seed=seed,
            write=write,
        )
    except ValueError as err:  # bad model directory, a card from another planting, too few problems
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(_summary(card, model if write else None))


def _summary(card: dict, written: Path | None) -> str:
    pe, c = card["eval"]["planted"], card["control"]
    at = c["oracle"]["at_default_layer"]
    return (
        f"planted greedy {pe['greedy_accuracy']:.3f} (errors A {pe['errors']['A']}, B {pe['errors']['B']}, other "
        f"{pe['errors']['other']}); plain greedy {card['eval']['plain']['greedy_accuracy']:.3f}\n"
        f"cos(A,B) per layer {[round(x, 2) for x in c['cos_ab']]}; default layer {c['default_layer']}: oracle "
        f"{at['accuracy']:.3f} vs {c['oracle']['baseline']:.3f} at alpha {at['alpha']}"
        + (f"\nwrote {written}/MODEL_CARD.md" if written else "")
    )
