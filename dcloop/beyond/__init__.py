"""Beyond classification: detection boxes as crops, NER tokens and spans, anomalies in
``(X, Y)`` pairs, and train/test discrepancy.

Submodules (import them directly; each keeps its heavy imports local):

* :mod:`dcloop.beyond.detection`: COCO annotations -> crop dataset for in-loop confident
  learning; flagged annotations written back as COCO-style JSON and drawn on the images;
  a synthetic COCO generator.
* :mod:`dcloop.beyond.ner`: CoNLL reader, out-of-fold token probabilities, cleanlab's
  token-classification issues and sentence ranking, spans as samples.
* :mod:`dcloop.beyond.pairs`: outlier scores on concatenated ``(X, Y)`` embeddings.
* :mod:`dcloop.beyond.discrepancy`: penultimate-layer embeddings from the fold replicas,
  UMAP / t-SNE maps, test-only neighbourhoods and a domain-classifier AUC.
"""
