"""Corpus-level BLEU-1..4 (Papineni, Roukos, Ward, Zhu 2002), our own implementation.

For candidates c_1..c_M (token lists), each with one or more references:

* modified n-gram precision, pooled over the corpus:
  p_n = sum_i sum_{g in ngrams_n(c_i)} min(count_{c_i}(g), max_r count_r(g))
        / sum_i |ngrams_n(c_i)|
* brevity penalty: c = total candidate length, r = sum over candidates of the
  reference length closest to the candidate's length (a tie takes the shorter
  one, as NIST's mteval and sacrebleu do); BP = 1 if c > r else exp(1 - r/c)
* BLEU-N = BP * exp(sum_{n=1..N} (1/N) log p_n), uniform weights; 0 when some
  p_n with n <= N is 0 (no smoothing), and 0 for an empty corpus.

Sentences given as strings are lower-cased and split on whitespace.
"""
import math
from collections import Counter

__all__ = ['ngrams', 'corpus_bleu', 'sentence_bleu', 'bleu_scores']


def _tokens(s):
    return s.lower().split() if isinstance(s, str) else list(s)


def ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _closest_ref_len(c_len, ref_lens):
    return min(ref_lens, key=lambda r: (abs(r - c_len), r))


def corpus_stats(candidates, references, max_n=4):
    """(matches[n], totals[n], c, r) summed over the corpus."""
    if len(candidates) != len(references):
        raise ValueError('%d candidates but %d reference lists' % (len(candidates), len(references)))
    matches, totals = [0] * max_n, [0] * max_n
    c_total = r_total = 0
    for cand, refs in zip(candidates, references):
        cand = _tokens(cand)
        if isinstance(refs, str):
            refs = [refs]
        refs = [_tokens(r) for r in refs]
        if not refs:
            raise ValueError('a candidate has no reference')
        c_total += len(cand)
        r_total += _closest_ref_len(len(cand), [len(r) for r in refs])
        for n in range(1, max_n + 1):
            cc = ngrams(cand, n)
            maxref = Counter()
            for r in refs:
                for g, k in ngrams(r, n).items():
                    if k > maxref[g]:
                        maxref[g] = k
            matches[n - 1] += sum(min(k, maxref[g]) for g, k in cc.items())
            totals[n - 1] += max(0, len(cand) - n + 1)
    return matches, totals, c_total, r_total


def _bleu_from_stats(matches, totals, c, r, n):
    if c == 0:
        return 0.0
    logs = []
    for k in range(n):
        if totals[k] == 0 or matches[k] == 0:
            return 0.0
        logs.append(math.log(matches[k] / totals[k]))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(sum(logs) / n)


def bleu_scores(candidates, references, max_n=4):
    """[BLEU-1, ..., BLEU-max_n] of the corpus (each in [0, 1])."""
    m, t, c, r = corpus_stats(candidates, references, max_n)
    return [_bleu_from_stats(m, t, c, r, n) for n in range(1, max_n + 1)]


def corpus_bleu(candidates, references, n=4):
    """BLEU-n of the corpus (in [0, 1])."""
    return bleu_scores(candidates, references, n)[n - 1]


def sentence_bleu(candidate, references, n=4):
    """BLEU-n of one candidate (a corpus of one; no smoothing)."""
    return corpus_bleu([candidate], [references], n)
