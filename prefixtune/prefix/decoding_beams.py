"""The search state of beam_search's pool (decoding.py): transformers' beam search, per input.

transformers 5.x (generation/utils.py: `_beam_search`, `_get_top_k_continuations`,
`_get_running_beams_for_next_iteration`, `_update_finished_beams`,
`_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`) runs a batch whose
inputs are all at the same step. Here every input of the pool has its own step (inputs join and
leave at any time), so the few places that use the step (the length penalty, where the new token
goes, max length, min_new_tokens) take a per-input step; everything else is the same tensor
operations in the same order on the same (inputs, beams) shapes, so scores are bit-identical
for identical logits. Per input, each rule is transformers': keep the top 2 x beams (more with
several eos tokens) continuations of all beams; the best `beams` of those that did not just end
run on; of those that ended (eos, or max length) only the ones in the top `beams` enter the
finished hypotheses, scored sum(log p) / length ** length_penalty; an input is done when it can
no longer change: early_stopping=True once it has `beams` finished hypotheses, otherwise when the
early-stop heuristic says no running beam can beat the worst finished one (for "never" with a
positive length penalty judged at max length), and at max length in any case. transformers keeps
a done input in the batch until every input is done, but masks it so that it no longer changes;
here it leaves at once, with the same result.

num_beams=1 is transformers' greedy search instead (generate() does not run beam search for one
beam): argmax of the processed logits (no log_softmax), done at eos or max length. An input
given a `Sampling` (the server's) draws its token instead, as transformers' sampling does
(logits / temperature, then top-p, softmax, multinomial) but from its own torch.Generator, so
that its tokens depend on its seed and its own logits only, not on what shares the pool.

Logits processors: min_new_tokens (eos masked while fewer tokens are generated), and the
generation config's forced_bos_token_id (encoder-decoder, first token) and forced_eos_token_id
(last token), in transformers' order; other processors are refused by decoding.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOW = -1.0e9  # transformers' score for what must not be chosen


@dataclass(frozen=True)
class Search:
    """The settings of one beam_search call."""

    num_beams: int
    max_new_tokens: int
    min_new_tokens: int
    length_penalty: float
    early_stopping: bool | str
    eos: tuple[int, ...]
    forced_bos: tuple[int, ...] = ()  # encoder-decoder only: forces the first generated token
    forced_eos: tuple[int, ...] = ()  # forces the token at max length (one of these: all get 0)


@dataclass(frozen=True)
class Sampling:
    """One input's sampling: temperature > 0, 0 < top_p <= 1, and its own generator (on the
    model's device), which only this input's draws advance."""

    temperature: float
    top_p: float
    generator: torch.Generator

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """One token from (vocab,) processed logits (transformers' TemperatureLogitsWarper and
        TopPLogitsWarper, then softmax and multinomial)."""
        scores = logits / self.temperature
        if self.top_p < 1.0:
            ordered, index = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - self.top_p)
            remove[-1:] = False  # keep at least one token
            scores = scores.masked_fill(remove.scatter(0, index, remove), -math.inf)
        probs = F.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """transformers' _gather_beams: tensor[i, index[i, j], ...]."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


class Beams:
    """Running beams and finished hypotheses of the inputs in the pool, one slot per input.

    The pool calls `join` for new inputs, `advance` once per step with every slot's logits,
    `result` for the done ones and `select` to drop them (and reorder slots)."""

    def __init__(self, search: Search, device: torch.device) -> None:
        self.search, self.device = search, device
        beams, steps = search.num_beams, search.max_new_tokens
        self.greedy = beams == 1
        self.eos = torch.tensor(search.eos, dtype=torch.long, device=device)
        self.forced_bos, self.forced_eos = (
            torch.tensor(tokens, dtype=torch.long, device=device) if tokens else None
            for tokens in (search.forced_bos, search.forced_eos)
        )
        self.keep = max(2, 1 + len(search.eos)) * beams  # transformers' beams_to_keep
        self.top_mask = torch.arange(self.keep, device=device) < beams
        # length ** length_penalty for every length, as transformers' Python float would be
        penalty = [max(k, 1) ** search.length_penalty for k in range(steps + 1)]
        penalty = torch.tensor(penalty, dtype=torch.float32, device="cpu")
        # on CUDA a tensor divided by a Python scalar is multiplied by its float reciprocal
        self._divide = device.type != "cuda"
        self._penalty = (penalty if self._divide else torch.reciprocal(penalty)).to(device)
        self.steps = torch.zeros(0, dtype=torch.long, device=device)  # tokens generated so far
        self.sampling: list[Sampling | None] = []  # per slot (one beam only)
        self.tokens = torch.zeros(0, beams, steps, dtype=torch.long, device=device)  # running
        self.scores = torch.zeros(0, beams, device=device)
        if not self.greedy:
            self.best_tokens = self.tokens.clone()  # finished hypotheses, best first
            self.best_scores = self.scores.clone()
            self.best_done = torch.zeros(0, beams, dtype=torch.bool, device=device)
            self.best_lengths = self.steps.new_zeros(0, beams)
            self.open = torch.zeros(0, 1, dtype=torch.bool, device=device)  # heuristic unmet

    def __len__(self) -> int:
        return self.steps.shape[0]

    def _penalised(self, scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        factor = self._penalty[lengths][:, None]
        return scores / factor if self._divide else scores * factor

    # ------------------------------------------------------------------ slots
    def join(self, inputs: int, sampling: list[Sampling | None] | None = None) -> None:
        self.sampling += sampling or [None] * inputs
        beams, steps = self.search.num_beams, self.search.max_new_tokens
        scores = torch.zeros(inputs, beams, device=self.device)
        scores[:, 1:] = LOW  # only the first beam continues at step 0 (all beams are equal)
        self.steps = torch.cat([self.steps, self.steps.new_zeros(inputs)])
        self.tokens = torch.cat([self.tokens, self.tokens.new_zeros(inputs, beams, steps)])
        self.scores = torch.cat([self.scores, scores])
        if not self.greedy:
            self.best_tokens = torch.cat([self.best_tokens, self.tokens[-inputs:]])
            self.best_scores = torch.cat([self.best_scores, torch.full_like(scores, LOW)])
            self.best_done = torch.cat([self.best_done, self.best_done.new_zeros(inputs, beams)])
            self.best_lengths = torch.cat([self.best_lengths, self.steps.new_zeros(inputs, beams)])
            self.open = torch.cat([self.open, self.open.new_ones(inputs, 1)])

    def select(self, slots: torch.Tensor, order: list[int] | None = None) -> None:
        """Keep these slots, in this order (`order`: the same on the host)."""
        order = slots.tolist() if order is None else order
        self.sampling = [self.sampling[slot] for slot in order]
        names = ["steps", "tokens", "scores"]
        if not self.greedy:
            names += ["best_tokens", "best_scores", "best_done", "best_lengths", "open"]
        for name in names:
            setattr(self, name, getattr(self, name).index_select(0, slots))

    def last_tokens(self) -> torch.Tensor:
        """(slots * beams,): each running beam's newest token, to feed the model next."""
        index = (self.steps - 1)[:, None, None].expand(-1, self.search.num_beams, 1)
        return self.tokens.gather(2, index).view(-1)

    def result(self, slots: list[int]) -> list[list[int]]:
        """The best hypothesis of each slot: its new tokens, ending with eos unless it reached
        max_new_tokens without one."""
        index = torch.tensor(slots, device=self.device)
        if self.greedy:
            tokens, lengths = self.tokens[index, 0], self.steps[index]
        else:
            tokens, lengths = self.best_tokens[index, 0], self.best_lengths[index, 0]
        return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)]

    # ------------------------------------------------------------------ one step
    def _process(self, scores: torch.Tensor) -> None:
        """transformers' logits processors, in place, with each slot's own step; scores is
        (slots, beams, vocab)."""
        search, steps = self.search, self.steps[:, None]
        if search.min_new_tokens > 0 and len(search.eos):
            blocked = (steps < search.min_new_tokens)[..., None]
            eos = scores[..., self.eos]
            scores[..., self.eos] = torch.where(blocked, -math.inf, eos)
        for tokens, step in ((self.forced_bos, 0), (self.forced_eos, search.max_new_tokens - 1)):
            if tokens is not None:
                forced = (steps == step)[..., None]
                scores.masked_fill_(forced, -math.inf)
                scores[..., tokens] = torch.where(forced, 0.0, scores[..., tokens])

    def advance(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every slot from its rows' logits, (slots, beams, vocab) in float32.

        Returns each new beam's source beam (slots, beams) and which slots are done."""
        if self.greedy:
            return self._greedy(logits)
        search = self.search
        inputs, beams, vocab = logits.shape
        steps, length = self.steps, search.max_new_tokens
        log_probs = F.log_softmax(logits, dim=-1)
        self._process(log_probs)
        log_probs = log_probs.add_(self.scores[:, :, None]).view(inputs, beams * vocab)

        # the top continuations of all beams (_get_top_k_continuations)
        top_scores, top_index = torch.topk(log_probs, k=self.keep)
        top_beam = top_index // vocab
        top_token = top_index % vocab
        top_tokens = _take(self.tokens, top_beam)
        at = steps[:, None, None].expand(-1, self.keep, 1)
        top_tokens.scatter_(2, at, top_token[:, :, None])
        ended = torch.isin(top_token, self.eos) | (steps + 1 >= length)[:, None]

        # the beams that run on (_get_running_beams_for_next_iteration)
        running = top_scores + ended.to(torch.float32) * LOW
        chosen = torch.topk(running, k=beams)[1]
        self.tokens = _take(top_tokens, chosen)
        self.scores = _take(running, chosen)
        source = _take(top_beam, chosen)

        # the finished hypotheses (_update_finished_beams)
        just_done = ended & self.top_mask[None, :]
        candidates = self._penalised(top_scores, steps + 1)
        full = torch.all(self.best_done, dim=-1, keepdim=True) & (search.early_stopping is True)
        candidates += full.to(torch.float32) * LOW
        candidates += (~self.open).to(torch.float32) * LOW
        candidates += (~just_done) * LOW
        merged = torch.cat((self.best_scores, candidates), dim=1)
        best = torch.topk(merged, k=beams)[1]
        lengths = (steps + 1)[:, None].expand(-1, self.keep)
        self.best_tokens = _take(torch.cat((self.best_tokens, top_tokens), dim=1), best)
        self.best_scores = _take(merged, best)
        self.best_done = _take(torch.cat((self.best_done, just_done), dim=1), best)
        self.best_lengths = _take(torch.cat((self.best_lengths, lengths), dim=1), best)
        self.steps = steps + 1

        # can a running beam still beat the worst finished one? (_check_early_stop_heuristic)
        if search.early_stopping == "never" and search.length_penalty > 0.0:
            hopeful = self.scores[:, :1] / (length**search.length_penalty)
        else:
            hopeful = self._penalised(self.scores[:, :1], self.steps)
        worst = torch.where(
            self.best_done, torch.min(self.best_scores, dim=1, keepdim=True)[0], LOW
        )
        self.open = self.open & torch.any(hopeful > worst, dim=-1, keepdim=True)
        done = ~self.open[:, 0] | (self.steps >= length)
        if search.early_stopping is True:
            done |= torch.all(self.best_done, dim=-1)
        return source, done

    def _greedy(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.clone()  # processed in place; new inputs' rows may be views
        self._process(logits)
        token = torch.argmax(logits[:, 0], dim=-1)
        for slot, sampling in enumerate(self.sampling):
            if sampling is not None:
                token[slot] = sampling.draw(logits[slot, 0])
        at = self.steps[:, None, None]
        self.tokens.scatter_(2, at, token[:, None, None])
        self.steps = self.steps + 1
        done = torch.isin(token, self.eos) | (self.steps >= self.search.max_new_tokens)
        return torch.zeros_like(self.tokens[:, :, 0]), done
