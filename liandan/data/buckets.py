"""Training sizes: how each image becomes W×H pixels, aspect-ratio buckets, and the batches of an epoch.

Sizes are (width, height) here; the dataset turns them into SDXL's (height, width) time ids.

Resize modes for one training size:
- "crop" (our default): scale to cover W×H keeping the aspect ratio, then cut the centre. Nothing is
  distorted; images of another aspect lose their edges.
- "stretch" (A1111's rule): resize straight to W×H with BICUBIC, no crop; other aspects are distorted.
Buckets always use "crop": every image goes to the bucket with the nearest aspect ratio, so little is cut.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

ResizeMode = Literal["crop", "stretch"]
Size = tuple[int, int]


@dataclass(frozen=True)
class Geometry:
    """Where an image's training pixels come from (all in pixels, (x, y) order)."""

    original_size: Size  # after EXIF orientation
    resized_size: Size  # the whole image after scaling
    crop_left_top: tuple[int, int]  # in the resized image
    target_size: Size  # what the model sees

    def flipped(self) -> Geometry:
        """The same geometry for the mirrored image: the crop window is mirrored too."""
        left, top = self.crop_left_top
        mirrored_left = self.resized_size[0] - left - self.target_size[0]
        return Geometry(self.original_size, self.resized_size, (mirrored_left, top), self.target_size)


def fit(original: Size, target: Size, mode: ResizeMode) -> Geometry:
    """The geometry that turns an image of size `original` into `target`."""
    if mode == "stretch" or original == target:
        return Geometry(original, target, (0, 0), target)
    (w, h), (tw, th) = original, target
    scale = max(tw / w, th / h)
    resized = (max(tw, round(w * scale)), max(th, round(h * scale)))
    crop = ((resized[0] - tw) // 2, (resized[1] - th) // 2)
    return Geometry(original, resized, crop, target)


def make_buckets(width: int, height: int, step: int = 64, max_aspect: float = 4.0) -> list[Size]:
    """Bucket sizes of at most width×height pixels, sides multiples of `step`, aspect up to `max_aspect`.

    For each side length s, the other side is the largest multiple of `step` keeping the area within
    width×height; the area of the training size itself is the budget, so all buckets cost about the same.
    """
    area = width * height
    buckets: set[Size] = set()
    for side in range(step, area // step + 1, step):
        other = (area // side) // step * step
        if other < step or max(side, other) / min(side, other) > max_aspect:
            continue
        buckets.add((side, other))
    return sorted(buckets, key=lambda s: (s[0] / s[1], s[0]))


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is closest to the image's (in log space, so 2:1 and 1:2 are equal)."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def plan_batches(
    groups: Mapping[Hashable, Sequence[int]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """The batches of one epoch; a batch never mixes groups (buckets).

    Like A1111's GroupedBatchSampler, an epoch has `total // batch_size` batches, all full: each group is
    shuffled and cut into full batches; each remaining batch takes a group drawn in proportion to its
    leftovers, uses those leftovers first and tops up with other images of the same group. With one group
    this is A1111's drop_last: the few images past the last full batch change from epoch to epoch.
    """
    full: list[list[int]] = []
    leftovers: dict[Hashable, list[int]] = {}
    for key in sorted(groups, key=repr):
        members = list(groups[key])
        rng.shuffle(members)
        cut = len(members) // batch_size * batch_size
        full += [members[i : i + batch_size] for i in range(0, cut, batch_size)]
        if cut < len(members):
            leftovers[key] = members[cut:]
    total = sum(len(g) for g in groups.values())
    extra = total // batch_size - len(full)
    for _ in range(extra):
        # A1111 picks the group with probability proportional to its leftovers: fair in expectation
        keys = [k for k in leftovers if leftovers[k]]
        (key,) = rng.choices(keys, weights=[len(leftovers[k]) for k in keys])
        batch, leftovers[key] = leftovers[key][:batch_size], leftovers[key][batch_size:]
        others = [i for i in groups[key] if i not in batch]
        need = batch_size - len(batch)
        batch += rng.sample(others, need) if len(others) >= need else rng.choices(list(groups[key]), k=need)
        full.append(batch)
    rng.shuffle(full)
    return full
