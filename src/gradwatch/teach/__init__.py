"""Teaching: `gradwatch explain` cards and `gradwatch quiz` flashcards.

`teach` sits above `explain`: it reads the finding-to-cause table (`explain.link.RELATED`)
and the mean-field theory (`explain.theory`) instead of restating them, and the public
API (`gw.load`) for a user's run. Nothing below imports it.
"""

from gradwatch.teach.cards import CARDS, Card, card, render

__all__ = ["CARDS", "Card", "card", "render"]
