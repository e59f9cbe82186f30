"""Corpus BLEU as a local `evaluate` metric module, so that it loads without the Hub.

Wraps NLTK's `corpus_bleu` (Papineni et al. 2002) with smoothing method 1 of
Chen and Cherry (2014): an n-gram order with no match gets 0.1 counts instead
of zeroing the score, which matters for short chat replies. Texts are split
with NLTK's `wordpunct_tokenize` (runs of word characters, runs of
punctuation), which needs no downloaded data. Load it with
`evaluate.load("path/to/bleu.py")`.
"""

import datasets
import evaluate
from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
    title = "{B}leu: a Method for Automatic Evaluation of Machine Translation",
    author = "Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing",
    booktitle = "Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics",
    year = "2002",
    url = "https://aclanthology.org/P02-1040",
    pages = "311--318",
}
@inproceedings{chen-cherry-2014-systematic,
    title = "A Systematic Comparison of Smoothing Techniques for Sentence-Level {BLEU}",
    author = "Chen, Boxing and Cherry, Colin",
    booktitle = "Proceedings of the Ninth Workshop on Statistical Machine Translation",
    year = "2014",
    url = "https://aclanthology.org/W14-3346",
    pages = "362--367",
}
"""

_DESCRIPTION = """\
BLEU scores generated texts against references by clipped n-gram precision
(n = 1..max_order, geometric mean) times a brevity penalty, pooled over the
whole corpus. Case-sensitive unless lowercase=True. The score is in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts to score.
    references: list of reference texts, or a list of lists of references.
    max_order: largest n-gram order (default 4, uniform weights).
    lowercase: lowercase texts before tokenizing (default False).
Returns:
    bleu: corpus BLEU in [0, 1]; translation_length and reference_length
    (tokens; for each item the reference closest in length counts);
    length_ratio = translation_length / reference_length.
Examples:
    >>> bleu = evaluate.load("src/sftlab/metrics/bleu.py")
    >>> text = "the quick brown fox jumps over the lazy dog"
    >>> bleu.compute(predictions=[text], references=[text])["bleu"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/nltk/nltk/blob/develop/nltk/translate/bleu_score.py"],
            reference_urls=["https://en.wikipedia.org/wiki/BLEU"],
        )

    def _compute(self, predictions, references, max_order=4, lowercase=False):
        def tokens(text):
            return wordpunct_tokenize(text.lower() if lowercase else text)

        hypotheses = [tokens(p) for p in predictions]
        list_of_references = [
            [tokens(r)] if isinstance(r, str) else [tokens(x) for x in r] for r in references
        ]
        weights = (1.0 / max_order,) * max_order
        smoothing = SmoothingFunction().method1
        score = corpus_bleu(list_of_references, hypotheses, weights=weights, smoothing_function=smoothing)

        translation_length = sum(len(h) for h in hypotheses)
        reference_length = sum(
            min((len(r) for r in refs), key=lambda n: (abs(n - len(h)), n))
            for refs, h in zip(list_of_references, hypotheses)
        )
        return {
            "bleu": float(score),
            "translation_length": translation_length,
            "reference_length": reference_length,
            "length_ratio": translation_length / reference_length if reference_length else 0.0,
        }
