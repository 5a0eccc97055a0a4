"""Prompts to UNet conditioning, built the way A1111 v1.10.1 builds it at inference.

- The prompt is parsed for emphasis (`(word)`, `[word]`, `(word:1.3)`, `BREAK`), tokenized, and cut into
  chunks of 75 tokens; a chunk that fills up within `comma_padding_backtrack` tokens of a comma is broken
  after that comma. Each chunk is wrapped in BOS/EOS, padded to 77 and encoded on its own; the chunks are
  concatenated.
- Emphasis ("Original" mode): each token's output is scaled by its weight, then the chunk is rescaled to its
  original mean. A1111 v1.10.1 takes that mean over the whole batch; we take it per prompt, which is the same
  for one prompt and keeps a prompt's conditioning independent of its batch.
- Layers: SD1 uses the last layer, or with CLIP skip n the hidden state n layers from the end through the
  final layer norm; SD2 the penultimate layer through the final layer norm (A1111 ignores CLIP skip there);
  SDXL the penultimate layer of CLIP-L and of OpenCLIP-G without the norm, concatenated to 2048 wide, plus
  G's pooled output (final norm, first EOS, text projection) of the first chunk. SDXL ignores CLIP skip too
  (A1111's `sdxl_clip_l_skip` is off by default).
- Textual-inversion embeddings are found by their tokenized name (longest name wins), take as many token slots
  as they have vectors, never straddle a chunk, and are spliced into the token embeddings by a forward hook
  on the encoder's embedding layer, so gradients reach the vectors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from liandan.errors import ConfigError, FormatError
from liandan.models.bundle import text_transformer

if TYPE_CHECKING:
    import torch

    from liandan.models.bundle import ModelBundle

CHUNK_LENGTH = 75
DEFAULT_COMMA_PADDING_BACKTRACK = 20  # A1111's default for `comma_padding_backtrack`
EMPHASIS_UP = 1.1
BREAK_WEIGHT = -1.0  # marks a BREAK in the parsed prompt, as A1111 does
SDXL_EMBEDDING_KEYS = ("clip_l", "clip_g")

# SD1/SD2: a [n, dim] tensor; SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]}
EmbeddingVectors = Union["torch.Tensor", Mapping[str, "torch.Tensor"]]

_ATTENTION_TOKEN = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\] | \\\\ | \\   # escaped brackets and backslashes
    | \( | \[                              # openers
    | :([+-]?[.\d]+)\)                     # (text:weight) closer
    | \) | ]                               # closers
    | [^\\()\[\]:]+                        # plain text
    | :                                    # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs with A1111's emphasis rules; BREAK gives ("BREAK", -1)."""
    runs: list[list] = []
    round_opened: list[int] = []
    square_opened: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            round_opened.append(len(runs))
        elif piece == "[":
            square_opened.append(len(runs))
        elif weight is not None and round_opened:
            multiply_from(round_opened.pop(), float(weight))
        elif piece == ")" and round_opened:
            multiply_from(round_opened.pop(), EMPHASIS_UP)
        elif piece == "]" and square_opened:
            multiply_from(square_opened.pop(), 1 / EMPHASIS_UP)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    runs.append(["BREAK", BREAK_WEIGHT])
                runs.append([part, 1.0])
    # unclosed brackets still count
    for start in round_opened:
        multiply_from(start, EMPHASIS_UP)
    for start in square_opened:
        multiply_from(start, 1 / EMPHASIS_UP)

    merged: list[list] = []
    for run in runs or [["", 1.0]]:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(text_, float(weight_)) for text_, weight_ in merged]


@dataclass
class PromptChunk:
    """77 token ids (BOS + 75 + EOS), their weights, and (position, embedding name) of spliced embeddings."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class TokenizedPrompt:
    chunks: list[PromptChunk]
    token_count: int  # tokens the prompt uses (A1111's token counter)


@dataclass
class Conditioning:
    """`context` [B, 77*k, width] for the UNet's cross-attention; SDXL adds `pooled` [B, 1280-ish]."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


class _EmbeddingIndex:
    """Embedding names by the token ids they tokenize to, longest first for each first id."""

    def __init__(self, tokenizer, embeddings: Mapping[str, EmbeddingVectors], bundle: ModelBundle) -> None:
        self.vectors: dict[str, list[torch.Tensor]] = {}
        self._by_first_id: dict[int, list[tuple[list[int], str]]] = {}
        for name, value in embeddings.items():
            self.vectors[name] = _vectors_per_encoder(name, value, bundle)
            ids = tokenizer(name, truncation=False, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(f"embedding name {name!r} gives no tokens")
            candidates = [*self._by_first_id.get(ids[0], []), (ids, name)]
            self._by_first_id[ids[0]] = sorted(candidates, key=lambda c: len(c[0]), reverse=True)

    def match(self, tokens: list[int], position: int) -> tuple[str, int] | None:
        """(embedding name, tokens its name spans) of the longest embedding name starting at `position`."""
        for ids, name in self._by_first_id.get(tokens[position], []):
            if tokens[position : position + len(ids)] == ids:
                return name, len(ids)
        return None

    def vector_count(self, name: str) -> int:
        return int(self.vectors[name][-1].shape[0])


def _vectors_per_encoder(name: str, value: EmbeddingVectors, bundle: ModelBundle) -> list[torch.Tensor]:
    """The embedding's vectors for each text encoder, checked against the encoders' widths."""
    widths = bundle.embedding_widths
    if isinstance(value, Mapping):
        if not bundle.is_sdxl or set(value) != set(SDXL_EMBEDDING_KEYS):
            raise FormatError(
                f"embedding {name!r} has keys {sorted(value)}: expected a [n, {widths[0]}] tensor for this "
                f"{bundle.family} model, or keys {list(SDXL_EMBEDDING_KEYS)} for SDXL"
            )
        vectors = [value[key] for key in SDXL_EMBEDDING_KEYS]
    else:
        if bundle.is_sdxl:
            raise FormatError(f"embedding {name!r} is one tensor: SDXL needs {list(SDXL_EMBEDDING_KEYS)}")
        vectors = [value]
    for vec, width in zip(vectors, widths):
        if vec.ndim != 2 or vec.shape[1] != width:
            raise FormatError(
                f"embedding {name!r} has shape {list(vec.shape)}: "
                f"this {bundle.family} model needs [n, {width}]"
            )
    counts = {int(vec.shape[0]) for vec in vectors}
    if len(counts) != 1 or not 1 <= min(counts) <= CHUNK_LENGTH:
        raise FormatError(
            f"embedding {name!r} has {sorted(counts)} vectors: expected the same count, 1 to {CHUNK_LENGTH}"
        )
    return vectors


class PromptEncoder:
    """Encodes prompts into UNet conditioning for one bundle, as A1111 does (see the module docstring)."""

    def __init__(
        self,
        bundle: ModelBundle,
        clip_skip: int = 1,
        comma_padding_backtrack: int = DEFAULT_COMMA_PADDING_BACKTRACK,
        forward: Sequence[torch.nn.Module] | None = None,
    ) -> None:
        """`forward`: the modules to call instead of the bundle's text encoders (their wrappers for several
        processes, whose forward is where gradient sync hooks in); everything else is read from the bundle."""
        layers = bundle.text_encoders[0].config.num_hidden_layers
        if not 1 <= clip_skip <= layers:
            raise ConfigError(f"clip_skip is {clip_skip}: expected 1 to {layers} for this model")
        if not 0 <= comma_padding_backtrack <= CHUNK_LENGTH:
            raise ConfigError(
                f"comma_padding_backtrack is {comma_padding_backtrack}: expected 0 to {CHUNK_LENGTH}"
            )
        self.bundle = bundle
        self.forward = list(forward) if forward is not None else bundle.text_encoders
        self.clip_skip = clip_skip
        self.comma_padding_backtrack = comma_padding_backtrack
        # SDXL's two tokenizers share one vocabulary: one tokenization keeps both encoders' chunks aligned
        self.tokenizer = bundle.tokenizers[0]
        self._bos = self.tokenizer.bos_token_id
        self._eos = self.tokenizer.eos_token_id
        self._comma = self.tokenizer.get_vocab().get(",</w>")

    # ---- tokens ----

    def tokenize(
        self, prompt: str, embeddings: Mapping[str, EmbeddingVectors] | None = None
    ) -> TokenizedPrompt:
        return self._tokenize(prompt, _EmbeddingIndex(self.tokenizer, embeddings or {}, self.bundle))

    def count_tokens(
        self, prompt: str, embeddings: Mapping[str, EmbeddingVectors] | None = None
    ) -> tuple[int, int]:
        """(tokens used, tokens available before one more chunk is needed), as A1111's token counter shows."""
        used = self.tokenize(prompt, embeddings).token_count
        return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH

    def _tokenize(self, prompt: str, index: _EmbeddingIndex) -> TokenizedPrompt:
        parsed = parse_emphasis(prompt)
        token_ids = self.tokenizer([text for text, _ in parsed], truncation=False, add_special_tokens=False)
        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def close_chunk(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
            padding = CHUNK_LENGTH - len(chunk.tokens)
            chunk.tokens = [self._bos, *chunk.tokens, *[self._eos] * padding, self._eos]
            chunk.multipliers = [1.0, *chunk.multipliers, *[1.0] * padding, 1.0]
            chunk.fixes = [(offset + 1, name) for offset, name in chunk.fixes]  # past the BOS
            chunks.append(chunk)
            chunk = PromptChunk()
            last_comma = -1

        for ids, (text, weight) in zip(token_ids["input_ids"], parsed):
            if text == "BREAK" and weight == BREAK_WEIGHT:
                close_chunk()
                continue
            position = 0
            while position < len(ids):
                if ids[position] == self._comma:
                    last_comma = len(chunk.tokens)
                elif (
                    self.comma_padding_backtrack
                    and len(chunk.tokens) == CHUNK_LENGTH
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= self.comma_padding_backtrack
                ):
                    # move the words after the last comma into the next chunk, embeddings included
                    cut = last_comma + 1
                    moved = PromptChunk(
                        chunk.tokens[cut:],
                        chunk.multipliers[cut:],
                        [(offset - cut, name) for offset, name in chunk.fixes if offset >= cut],
                    )
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    chunk.fixes = [fix for fix in chunk.fixes if fix[0] < cut]
                    close_chunk()
                    chunk = moved
                if len(chunk.tokens) == CHUNK_LENGTH:
                    close_chunk()

                found = index.match(ids, position)
                if found is None:
                    chunk.tokens.append(ids[position])
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                name, name_length = found
                vector_count = index.vector_count(name)
                if len(chunk.tokens) + vector_count > CHUNK_LENGTH:
                    close_chunk()
                chunk.fixes.append((len(chunk.tokens), name))
                chunk.tokens += [0] * vector_count  # placeholder ids; the vectors replace their embeddings
                chunk.multipliers += [weight] * vector_count
                position += name_length

        if chunk.tokens or not chunks:
            close_chunk(is_last=True)
        return TokenizedPrompt(chunks, token_count)

    def _empty_chunk(self) -> PromptChunk:
        return PromptChunk([self._bos] + [self._eos] * (CHUNK_LENGTH + 1), [1.0] * (CHUNK_LENGTH + 2))

    # ---- encoding ----

    def encode(
        self, prompts: Sequence[str], embeddings: Mapping[str, EmbeddingVectors] | None = None
    ) -> Conditioning:
        """Conditioning of a batch of prompts; shorter prompts get empty chunks, as in A1111."""
        import torch

        if isinstance(prompts, str) or not prompts:
            raise ConfigError(f"encode() takes a non-empty list of prompts, got {prompts!r}")
        index = _EmbeddingIndex(self.tokenizer, embeddings or {}, self.bundle)
        tokenized = [self._tokenize(prompt, index).chunks for prompt in prompts]
        chunk_count = max(len(chunks) for chunks in tokenized)

        contexts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for i in range(chunk_count):
            batch = [chunks[i] if i < len(chunks) else self._empty_chunk() for chunks in tokenized]
            per_encoder = [
                self._encode_chunk(encoder_index, batch, index)
                for encoder_index in range(len(self.bundle.text_encoders))
            ]
            hidden = [z for z, _ in per_encoder]
            hidden = [z.to(device=hidden[0].device, dtype=hidden[0].dtype) for z in hidden]
            contexts.append(torch.cat(hidden, dim=-1))
            if i == 0 and self.bundle.is_sdxl:
                pooled = per_encoder[-1][1]
        return Conditioning(torch.cat(contexts, dim=1), pooled)

    def input_ids(self, encoder_index: int, batch: Sequence[PromptChunk]) -> torch.Tensor:
        """The token ids [len(batch), 77] of `batch` for text encoder `encoder_index`, on its device."""
        import torch

        pad = self.bundle.tokenizers[encoder_index].pad_token_id
        rows = []
        for chunk in batch:
            row = list(chunk.tokens)
            if pad != self._eos:  # OpenCLIP pads with its own id after the first EOS
                first_eos = row.index(self._eos)
                row[first_eos + 1 :] = [pad] * (len(row) - first_eos - 1)
            rows.append(row)
        device = self.bundle.text_encoders[encoder_index].device
        return torch.tensor(rows, dtype=torch.long, device=device)

    def _encode_chunk(
        self, encoder_index: int, batch: list[PromptChunk], index: _EmbeddingIndex
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        encoder = self.bundle.text_encoders[encoder_index]
        input_ids = self.input_ids(encoder_index, batch)

        splices = [
            [(pos, index.vectors[name][encoder_index]) for pos, name in chunk.fixes] for chunk in batch
        ]
        hook = encoder.get_input_embeddings().register_forward_hook(_splice_hook(splices))
        try:
            out = self.forward[encoder_index](input_ids=input_ids, output_hidden_states=True)
        finally:
            hook.remove()

        z = self._pick_layer(encoder_index, out, encoder)
        pooled = None
        if self.bundle.is_sdxl and encoder_index == 1:
            first_eos = (input_ids == self._eos).int().argmax(dim=1)
            last = out.last_hidden_state  # already through the final layer norm
            pooled = encoder.text_projection(last[torch.arange(last.shape[0], device=last.device), first_eos])
        multipliers = torch.tensor([chunk.multipliers for chunk in batch], device=z.device, dtype=z.dtype)
        return _apply_emphasis(z, multipliers), pooled

    def _pick_layer(self, encoder_index: int, out, encoder) -> torch.Tensor:
        final_norm = text_transformer(encoder).final_layer_norm
        if self.bundle.family == "sd1":
            if self.clip_skip == 1:
                return out.last_hidden_state
            return final_norm(out.hidden_states[-self.clip_skip])
        if self.bundle.family == "sd2":
            return final_norm(out.hidden_states[-2])
        return out.hidden_states[-2]  # SDXL: both encoders, penultimate, no norm


def _splice_hook(splices: list[list[tuple[int, torch.Tensor]]]):
    """A forward hook for the token-embedding layer that puts each row's embedding vectors at their slots."""
    import torch

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        if not any(splices):
            return output
        rows = []
        for row, row_splices in zip(output, splices):
            for position, vectors in row_splices:
                vectors = vectors.to(device=row.device, dtype=row.dtype)
                row = torch.cat([row[:position], vectors, row[position + vectors.shape[0] :]])
            rows.append(row)
        return torch.stack(rows)

    return hook


def _apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: weight each token, then restore each prompt's mean."""
    import torch

    emphasised = (multipliers != 1.0).any(dim=1)
    if not bool(emphasised.any()):
        return z
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted = z * multipliers[..., None]
    rescaled = weighted * (original_mean / weighted.mean(dim=(1, 2), keepdim=True))
    # rows without emphasis stay exactly as encoded
    return torch.where(emphasised[:, None, None], rescaled, z)


def sdxl_time_ids(
    original_size: tuple[int, int], crop: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL's size conditioning: original (height, width), crop (top, left), target (height, width)."""
    import torch

    return torch.tensor([*original_size, *crop, *target_size], dtype=torch.float32)


def added_cond_kwargs(cond: Conditioning, time_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """`added_cond_kwargs` of diffusers' SDXL UNet: pooled text embeddings and time ids per prompt."""
    if cond.pooled is None:
        raise ValueError("this conditioning has no pooled output: added conditions are for SDXL only")
    pooled = cond.pooled
    time_ids = time_ids.to(device=pooled.device, dtype=pooled.dtype).reshape(-1, 6)
    return {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], 6)}
