"""`worldclip metadata`: per-language metadata (the concept vocabularies) from sources that
install offline (docs/curation.md, section 1).

    codes.py            entries, wiki codes, folding into groups, LID label -> group
    wiki.py             Wikipedia dumps: tokenising, n-gram counting, PMI, bigram surfaces
    pageviews.py        Wikimedia pageview lines -> views per title
    wordnet.py          WordNet / Open Multilingual WordNet readers
    wordfreq_source.py  wordfreq lists as unigram counts
    build.py            one language in MetaCLIP 2 order with its caps; merging folded codes
    stage.py            Ray Data counting jobs and the stage (`run`): lists, groups, manifest
"""

from worldclip.pipelines.metadata_build.stage import run

__all__ = ["run"]
