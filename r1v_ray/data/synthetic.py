"""A synthetic image-reasoning task, deterministic by seed, streamable to any size.

Each row is drawn from its own RNG seeded by (seed, split, index), so rows are
independent: any range can be generated alone, in any order, in parallel,
without holding the others. Tasks mix multiple-choice and open answers and
need the image (the text alone leaves the answer undetermined):

* shape_kind     which shape is drawn (multiple choice)
* count_color    how many shapes of a colour (open, integer)
* tallest_bar    which colour's bar is tallest (multiple choice)
* missing_angle  each interior angle of the drawn regular polygon (open; the
                 paper's pentagon example: the side count is only in the image)
* sum_digits     the sum of the digits drawn (open)
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
SHAPES = ["circle", "square", "triangle"]
POLYGONS = {3: "triangle", 4: "quadrilateral", 5: "pentagon", 6: "hexagon"}
TASKS = ["shape_kind", "count_color", "tallest_bar", "missing_angle", "sum_digits"]


def _rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _cells(rng: random.Random, size: int, n: int) -> list[tuple[int, int, int, int]]:
    """n non-overlapping boxes on a 3x3 grid."""
    step = size // 3
    slots = rng.sample(range(9), n)
    pad = max(2, step // 8)
    return [
        ((s % 3) * step + pad, (s // 3) * step + pad, (s % 3 + 1) * step - pad, (s // 3 + 1) * step - pad)
        for s in slots
    ]


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size, size), "white")
    return img, ImageDraw.Draw(img)


def _letter(choices: list[str], correct: str) -> str:
    return "ABCD"[choices.index(correct)]


def _row(
    img: Image.Image, question: str, answer: str, rationale: str, choices: list[str] | None = None, scene=None
) -> dict:
    """A generated row; `make_row` encodes its image and adds the id, source and category. `scene`: what the
    image shows, as 4 SCENE_WORDS (make_row drops it unless asked)."""
    return dict(image=img, question=question, choices=choices, answer=answer, rationale=rationale, scene=scene)


def shape_kind(rng: random.Random, size: int) -> dict:
    img, draw = _canvas(size)
    kind = rng.choice(SHAPES)
    color = rng.choice(list(COLORS))
    m = size // 6
    _draw_shape(draw, kind, (m, m, size - m, size - m), COLORS[color])
    choices = SHAPES[:]  # one fixed order: the letter follows from the shape seen
    letter = _letter(choices, kind)
    rationale = f"The image shows a single {color} {kind}. The {kind} is option {letter}."
    return _row(img, "Which shape is shown in the image?", letter, rationale, choices, [color, kind, "-", "-"])


def count_color(rng: random.Random, size: int) -> dict:
    img, draw = _canvas(size)
    target = rng.choice(list(COLORS))
    n_shapes = rng.randint(2, 6)
    colors = [rng.choice(list(COLORS)) for _ in range(n_shapes)]
    for box, color in zip(_cells(rng, size, n_shapes), colors):
        _draw_shape(draw, rng.choice(SHAPES), box, COLORS[color])
    count = colors.count(target)
    rationale = f"There are {n_shapes} shapes in the image. Counting the {target} ones gives {count}."
    scene = [str(colors.count(c)) for c in COLORS]
    return _row(img, f"How many {target} shapes are in the image?", str(count), rationale, scene=scene)


def tallest_bar(rng: random.Random, size: int) -> dict:
    img, draw = _canvas(size)
    names = rng.sample(list(COLORS), 3)
    heights = rng.sample(range(size // 5, size - 4, max(1, size // 12)), 3)
    width = size // 4
    for i, (name, h) in enumerate(zip(names, heights)):
        x0 = 4 + i * (width + 4)
        draw.rectangle((x0, size - 2 - h, x0 + width, size - 2), fill=COLORS[name])
    tallest = names[heights.index(max(heights))]
    choices = list(COLORS)  # every colour, in one order: the letter follows from the tallest bar's colour
    letter = _letter(choices, tallest)
    rationale = f"The chart has {', '.join(names)} bars. The {tallest} bar is the tallest, which is option {letter}."
    return _row(img, "Which colour is the tallest bar in the chart?", letter, rationale, choices, [*names, tallest])


def missing_angle(rng: random.Random, size: int) -> dict:
    import math

    sides = rng.choice(list(POLYGONS))
    total = (sides - 2) * 180
    x = total // sides  # a regular polygon: the side count, seen only in the image, fixes every angle
    img, draw = _canvas(size)
    c, r = size / 2, size * 0.4
    start = rng.random() * math.pi
    points = [
        (c + r * math.cos(start + 2 * math.pi * k / sides), c + r * math.sin(start + 2 * math.pi * k / sides))
        for k in range(sides)
    ]
    color = rng.choice(list(COLORS))
    draw.polygon(points, outline=(0, 0, 0), fill=COLORS[color])
    question = "The polygon in the image is regular. What is each of its interior angles x in degrees?"
    rationale = (
        f"The polygon has {sides} sides, so it is a {POLYGONS[sides]} and its interior angles sum to "
        f"({sides} - 2) * 180 = {total}. Its {sides} angles are equal, so x = {total} / {sides} = {x}."
    )
    return _row(img, question, str(x), rationale, scene=[color, POLYGONS[sides], "-", "-"])


def sum_digits(rng: random.Random, size: int) -> dict:
    img, draw = _canvas(size)
    n = 2
    digits = [rng.randint(1, 9) for _ in range(n)]
    for i, d in enumerate(digits):
        draw.text((4 + i * size // n, size // 3), str(d), fill=(0, 0, 0), font_size=max(10, size // 3))
    rationale = f"The digits in the image are {', '.join(map(str, digits))}. Their sum is {sum(digits)}."
    scene = [*map(str, digits), *["-"] * (4 - n)]
    return _row(img, "What is the sum of the digits written in the image?", str(sum(digits)), rationale, scene=scene)


GENERATORS = {name: globals()[name] for name in TASKS}
# What each image shows, as 4 words (one per image token of a 64-px tile): the targets a vision encoder is
# pretrained to predict and the scene a text-only LM reads in their place (r1v_ray/model/zoo.py).
SCENE_WORDS = ["-", *COLORS, *SHAPES, *[p for p in POLYGONS.values() if p not in SHAPES], *map(str, range(10))]


def make_row(
    seed: int, split: str, index: int, image_size: int = 64, tasks: list[str] | None = None, with_scene: bool = False
) -> dict:
    """The row at `index` of `split`: the same for the same arguments, on any machine. `with_scene` keeps
    the row's `scene` (its 4 SCENE_WORDS); dataset rows never carry it."""
    tasks = tasks or TASKS
    unknown = set(tasks) - set(GENERATORS)
    if unknown:
        raise ValueError(f"data.synthetic.tasks: unknown task(s) {sorted(unknown)}; valid: {TASKS}")
    rng = _rng(seed, split, index)
    task = tasks[index % len(tasks)]
    row = GENERATORS[task](rng, image_size)
    row["image"] = _png(row["image"])
    if not with_scene:
        del row["scene"]
    row.update(id=f"synthetic-{split}-{index:07d}", source=f"synthetic/{task}", category=task)
    return row


def iter_rows(
    n: int, seed: int = 0, split: str = "train", image_size: int = 64, tasks: list[str] | None = None, start: int = 0
) -> Iterator[dict]:
    for index in range(start, start + n):
        yield make_row(seed, split, index, image_size, tasks)


def write_split(
    uri: str,
    n: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    tasks: list[str] | None = None,
    rows_per_file: int = 4096,
) -> int:
    """Stream `n` rows to a Parquet dataset at `uri`, holding at most one file's rows in memory."""
    from r1v_ray.data.io import ParquetSink
    from r1v_ray.data.schema import canonical_table

    batch: list[dict] = []
    with ParquetSink(uri, rows_per_file=rows_per_file) as sink:
        for row in iter_rows(n, seed, split, image_size, tasks):
            batch.append(row)
            if len(batch) == 512:
                sink.write(canonical_table(batch))
                batch = []
        if batch:
            sink.write(canonical_table(batch))
    return sink.rows_written


def corpus(n: int = 400, seed: int = 0) -> Iterator[str]:
    """Text of the task (questions, options, rationales, answers in the paper's format, the
    evaluation prompts) for training tokenizers, so the tiny models' frequent strings are few tokens."""
    from r1v_ray.prompts import format_choices
    from r1v_ray.rewards import MULTI_CHOICE_PROMPT, OPEN_PROMPT

    for row in iter_rows(n, seed=seed, split="corpus", image_size=32):
        yield row["question"]
        if row["choices"]:
            yield format_choices(row["choices"])
        yield f"<think>\n{row['rationale']}\n</think>\n\nAnswer: \\boxed{{{row['answer']}}}"
    for _ in range(max(1, n // 20)):
        yield MULTI_CHOICE_PROMPT
        yield OPEN_PROMPT
