"""The ``vmerge`` command line: typer commands that call library functions, nothing more.

Exit codes: 0 success, 2 a problem with the user's input (recipe, paths, checkpoints), 1 a bug.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from mergekit_vision.cli import perf
from mergekit_vision.cli.common import (
    RecipeArg,
    SetOption,
    console,
    errors,
    guarded,
    load_toy_recipe,
    user_error,
)
from mergekit_vision.recipe.io import dump_recipe, load_recipe
from mergekit_vision.recipe.schema import recipe_json_schema
from mergekit_vision.registry import ALL_REGISTRIES

app = typer.Typer(
    name="vmerge",
    help="Merge vision foundation models into one backbone by multi-teacher distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def run(
    recipe: RecipeArg,
    set_: SetOption = None,
    output: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>).")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop (with a checkpoint) at step N.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run folder's last checkpoint.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="One step per stage on synthetic images; weights optional.")
    ] = False,
) -> None:
    """Train a merged model from RECIPE (checkpoints and metrics.jsonl in the run folder)."""
    from mergekit_vision.run import run_recipe

    result = guarded(
        lambda: run_recipe(
            recipe,
            overrides=set_,
            output=output,
            max_steps=max_steps,
            resume=resume,
            dry_run=dry_run,
        )
    )
    if result.main_process:  # under torchrun, rank 0 reports for all
        console.print(
            f"[green]done[/]: step {result.state.global_step}, run folder {result.output_dir}"
        )


@app.command("eval")
def eval_(
    target: Annotated[Path, typer.Argument(help="A run folder, or a recipe (its runs/<name>).")],
    set_: SetOption = None,
    output: Annotated[
        Path | None, typer.Option(help="Where eval.json goes (default: run).")
    ] = None,
) -> None:
    """Measure the teachers, the two-model pipeline and the merged model (eval.json, eval.png)."""
    from mergekit_vision.eval.evaluate import evaluate_run

    results = guarded(lambda: evaluate_run(target, overrides=set_, output=output))
    console.print(f"[green]wrote[/] {results['files']['json']}")


@app.command()
def compare(
    recipe: RecipeArg,
    grid: Annotated[
        list[str] | None,
        typer.Option(help="axis=v1,v2 (replay, conflict, weighting, or any dotted key)."),
    ] = None,
    variants: Annotated[
        list[Path] | None,
        typer.Option(help="A named-variants YAML file: one axis, each value a set of keys."),
    ] = None,
    set_: SetOption = None,
    output: Annotated[
        Path | None, typer.Option(help="Folder (default runs/<name>-compare).")
    ] = None,
    finished_only: Annotated[
        bool, typer.Option(help="Train nothing: table the variants that have finished.")
    ] = False,
) -> None:
    """Train and evaluate every variant of a grid; write compare.csv, compare.md, pareto.png."""
    from mergekit_vision.tools.compare import compare as run_compare
    from mergekit_vision.tools.compare import format_cell

    folder = output or Path("runs") / f"{guarded(lambda: load_recipe(recipe, set_)).name}-compare"
    rows = guarded(
        lambda: run_compare(
            recipe,
            grid=grid or [],
            overrides=set_,
            output=folder,
            variant_files=variants,
            finished_only=finished_only,
        )
    )
    if not rows:  # --finished-only before any variant finished
        console.print("[yellow]no variant of this grid has finished yet: nothing to table[/]")
        return
    console.print(f"[green]wrote[/] {folder / 'compare.md'} and {folder / 'pareto.png'}")
    table = Table(*rows[0].keys(), title="vmerge compare")
    for row in rows:
        table.add_row(*[format_cell(v) for v in row.values()])
    console.print(table)


app.command()(perf.bench)
app.command()(perf.profile)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or one checkpoint folder).")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="sam, open_clip, safetensors (with a model card), hf (from_pretrained) or onnx.",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option(help="Folder (default RUN_DIR/export/FORMAT).")
    ] = None,
) -> None:
    """Export the merged model for segment_anything, open_clip, the Hugging Face Hub or ONNX
    runtimes, or as safetensors + model card."""
    from mergekit_vision.export.formats import export_run

    files = guarded(lambda: export_run(run_dir, format=format_, output=output))
    for path in files:
        console.print(f"[green]wrote[/] {path}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or one checkpoint folder).")],
    images: Annotated[list[Path], typer.Argument(help="Image files (any size, any format).")],
    classes: Annotated[
        str | None, typer.Option(help='Class names for semantic labels: "cat,dog,grass".')
    ] = None,
    points: Annotated[
        list[str] | None, typer.Option("--points", help="A point prompt x,y (repeatable).")
    ] = None,
    boxes: Annotated[
        list[str] | None, typer.Option("--boxes", help="A box prompt x0,y0,x1,y1 (repeatable).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Folder (default RUN_DIR/predict).")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Model input side (default: eval's).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Background threshold (default: eval's calibrated).")
    ] = None,
    refine: Annotated[
        bool, typer.Option(help="Refine the CLIP head's labels with the SAM head.")
    ] = True,
) -> None:
    """Segment IMAGES by class names and/or point and box prompts; write label and overlay PNGs."""
    from mergekit_vision.export import predict as lib

    def go() -> list[Any]:
        return lib.predict(
            run_dir,
            images,
            classes=lib.parse_classes(classes or ""),
            points=[lib.parse_numbers(p, 2, "--points") for p in points or []],
            boxes=[lib.parse_numbers(b, 4, "--boxes") for b in boxes or []],
            output=output,
            resolution=resolution,
            threshold=threshold,
            refine=refine,
        )

    for result in guarded(go):
        for path in result.files.values():
            console.print(f"[green]wrote[/] {path}")


@app.command()
def cache(
    recipe: RecipeArg,
    set_: SetOption = None,
    output: Annotated[
        Path | None, typer.Option(help="Write OUTPUT/<task> (default: each targets_cache).")
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="Cache this task (repeatable).")
    ] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard file.")] = 256,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Teacher batch (default: the task's).")
    ] = None,
    codec: Annotated[
        str, typer.Option(help="Target storage: fp16, bf16, int8 or pca:K (docs/cache.md).")
    ] = "fp16",
    dtype: Annotated[
        str | None, typer.Option(hidden=True, help="Before --codec: float16 or bfloat16.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a cache of other settings in the folder.")
    ] = False,
) -> None:
    """Precompute teachers' targets per sample view into a resumable cache (docs/cache.md)."""
    from mergekit_vision.data.targets_cache.codecs import LEGACY_DTYPES, parse_codec
    from mergekit_vision.tools.cache_writer import cache_recipe

    if dtype is not None:
        if dtype not in LEGACY_DTYPES or codec not in ("fp16", LEGACY_DTYPES[dtype]):
            user_error(ValueError(f"--dtype {dtype} is replaced by --codec (fp16, bf16, ...)"))
        codec = LEGACY_DTYPES[dtype]
        errors.print(f"[yellow]note:[/] --dtype {dtype} is now --codec {codec}", highlight=False)
    try:
        chosen = parse_codec(codec)
    except ValueError as err:
        user_error(ValueError(f"--codec: {err}"))
    reports = guarded(
        lambda: cache_recipe(
            recipe,
            overrides=set_,
            tasks=task,
            output=output,
            shard_size=shard_size,
            batch_size=batch_size,
            codec=chosen,
            overwrite=overwrite,
        )
    )
    for r in reports:
        console.print(
            f"[green]cached[/] {r.task}: {r.samples} samples in {r.folder} "
            f"({r.shards_written} shards written, {r.shards_reused} kept, {r.seconds:.1f} s); "
            f"train from it with tasks.{r.task}.targets_cache={r.folder}"
        )
        size = r.size
        console.print(
            f"  targets as {size.codec}: {size.bytes_per_image:,.0f} B/image "
            f"(fp16: {size.fp16_bytes_per_image:,.0f} B/image, {size.ratio_to_fp16:.2f}x smaller"
            + (f"; includes {size.shared:,} B of codec state" if size.shared else "")
            + ")",
            highlight=False,
        )


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (overlaid in one plot).")],
    output: Annotated[
        Path | None,
        typer.Option(help="PNG file (default RUN_DIR/curves.png; curves.png for several)."),
    ] = None,
) -> None:
    """Plot loss curves per task and stage, the LR and eval results of runs into one PNG."""
    from mergekit_vision.tools.plot import write_plot

    path = guarded(lambda: write_plot(run_dirs, output))
    console.print(f"[green]wrote[/] {path}")


@app.command()
def validate(recipe: RecipeArg, set_: SetOption = None) -> None:
    """Check RECIPE and print it fully resolved (exit 2 listing every problem); say which weights
    it names by hub name or tag are not in the local cache."""
    from mergekit_vision.engine.named_weights import uncached_weights

    resolved = guarded(lambda: load_recipe(recipe, set_))
    console.print(dump_recipe(resolved), highlight=False, markup=False, end="")
    for issue in uncached_weights(resolved):  # a note on stderr: stdout stays the recipe
        errors.print(f"[yellow]not cached:[/] {issue}", highlight=False, soft_wrap=True)


@app.command()
def fetch(recipe: RecipeArg, set_: SetOption = None) -> None:
    """Download the weights RECIPE names by hub name or tag into the local cache, for a run
    without internet (HF_HOME places the cache; docs/weights.md)."""
    from mergekit_vision.engine.named_weights import Fetched, fetch_weights

    def report(done: Fetched) -> None:
        state = "[green]downloaded[/]" if done.downloaded else "[green]cached[/]"
        console.print(f"{state} {done.where}: {done.name!r} -> {done.path}", highlight=False)

    resolved = guarded(lambda: load_recipe(recipe, set_))
    if not guarded(lambda: fetch_weights(resolved, source=str(recipe), report=report)):
        console.print("nothing to fetch: the recipe names no weights by hub name or tag")


@app.command()
def schema() -> None:
    """Print the recipe's JSON Schema (for editor completion)."""
    console.print_json(json.dumps(recipe_json_schema()))


@app.command()
def plugins(
    kind: Annotated[
        str | None, typer.Argument(help="One kind: " + ", ".join(ALL_REGISTRIES))
    ] = None,
) -> None:
    """List registered plugins (built-in and from installed packages)."""
    if kind is not None and kind not in ALL_REGISTRIES:
        user_error(ValueError(f"unknown kind {kind!r}; kinds: {', '.join(ALL_REGISTRIES)}"))
    table = Table("kind", "name", "source", "summary")
    for registry in ALL_REGISTRIES.values():
        if kind is None or registry.kind == kind:
            for entry in registry:
                table.add_row(registry.kind, entry.name, entry.source, entry.summary)
    console.print(table)


toy_app = typer.Typer(
    help="The toy world: CPU-sized data and teachers for trying the merge without downloads.",
    no_args_is_help=True,
)
app.add_typer(toy_app, name="toy")


@toy_app.command("teachers")
def toy_teachers(recipe: RecipeArg, set_: SetOption = None) -> None:
    """Export the recipe's toy data and train its toy teachers (cached; reused when unchanged)."""
    from mergekit_vision.toy.prepare import prepare_toy

    def prepare() -> None:
        resolved = load_toy_recipe(recipe, set_, missing="no 'toy' section to prepare")
        prepare_toy(resolved)

    guarded(prepare)
    console.print("[green]toy data and teachers ready[/]")


toy_app.command("sam-cost")(perf.toy_sam_cost)


@toy_app.command("data")
def toy_data(recipe: RecipeArg, set_: SetOption = None) -> None:
    """Export the recipe's toy data only (training and evaluation scenes in real formats)."""
    from mergekit_vision.toy.prepare import prepare_toy

    def prepare() -> None:
        resolved = load_toy_recipe(recipe, set_, missing="no 'toy' section to prepare")
        prepare_toy(resolved, teachers=False)

    guarded(prepare)
    console.print("[green]toy data ready[/]")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (what tests and ``python -m`` call)."""
    from mergekit_vision.engine.performance import flush_denormals

    flush_denormals()  # before torch starts its threads, which inherit it
    command = typer.main.get_command(app)
    try:
        # Without standalone mode click returns the code of a typer.Exit instead of raising it.
        code = command.main(args=argv, prog_name="vmerge", standalone_mode=False)
    # newer typer raises its own copy of click's exceptions (typer.Exit, typer.Abort, and
    # typer.TyperException for usage errors such as an unknown option); older typer, click's.
    except (click.exceptions.Exit, typer.Exit) as done:
        return done.exit_code
    except (click.exceptions.Abort, typer.Abort):
        return 130
    except (click.ClickException, typer.TyperException) as err:
        err.show()  # "Usage: ... Error: No such option: --x", not a traceback
        return err.exit_code
    return code if isinstance(code, int) else 0


def entrypoint() -> None:
    sys.exit(main())
