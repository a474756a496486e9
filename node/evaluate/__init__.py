"""Evaluation on local labels (issue 13): ``run`` (labels -> metrics, scores, report), ``cohort``
(scores from kept embeddings), ``analysis`` / ``metrics`` (per finding), ``report`` (HTML),
``tune`` (operating points written back into a profile), ``labels`` (labels.csv).

A regular package (it had no ``__init__``): a built wheel leaves a namespace folder out."""
