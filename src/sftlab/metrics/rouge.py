"""ROUGE as a local `evaluate` metric module, so that it loads without the Hub.

Modelled on the official `evaluate` ROUGE script: it wraps Google's
`rouge_score` package. Two deliberate differences: the aggregate is the plain
mean over items (the official script reports the midpoint of a random,
unseeded bootstrap), and only F-measures are returned. Load it with
`evaluate.load("path/to/rouge.py")`.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/W04-1013",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) compares a generated
text with one or more references by n-gram overlap (rouge1, rouge2) or by the
longest common subsequence of tokens (rougeL, rougeLsum). Texts are lowercased
and split on anything that is not a letter or digit (the `rouge_score`
default tokenizer), so it is meant for English. Scores are F-measures in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts to score.
    references: list of reference texts, or a list of lists of references
        (the best-scoring reference counts for each prediction).
    rouge_types: which scores to compute; default ["rouge1", "rouge2", "rougeL", "rougeLsum"].
    use_aggregator: if True, return the mean over items; if False, one score per item.
    use_stemmer: apply the Porter stemmer before matching.
Returns:
    A dict with one entry per rouge type: a float (aggregated) or a list of floats.
Examples:
    >>> rouge = evaluate.load("src/sftlab/metrics/rouge.py")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat"], rouge_types=["rougeL"])
    {'rougeL': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
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
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False):
        if rouge_types is None:
            rouge_types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer)
        per_item = {key: [] for key in rouge_types}
        for prediction, reference in zip(predictions, references):
            if isinstance(reference, str):
                scores = scorer.score(reference, prediction)
            else:
                scores = scorer.score_multi(reference, prediction)
            for key in rouge_types:
                per_item[key].append(float(scores[key].fmeasure))
        if use_aggregator:
            return {key: (sum(v) / len(v) if v else 0.0) for key, v in per_item.items()}
        return per_item
