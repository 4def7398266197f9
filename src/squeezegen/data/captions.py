"""Captions built from a painting's style and genre (LAPIS has no captions of its own), and the
rating a prompt can ask for.

"a post-impressionist landscape painting", "an abstract expressionist portrait painting";
with a rating, "a cubist portrait painting, rated 8 of 10": the image's mean LAPIS score (0-100)
rounded to tenths, the way aesthetic fine-tunes put a rating in the caption (SDXL conditions on
an aesthetic score in the same spirit), so a prompt can ask for one.
"""

from __future__ import annotations

# WikiArt style names as LAPIS spells them (underscores), each with the adjective a caption uses.
# WikiArt has 27 styles; LAPIS uses 26 of them. Action_painting is left out here: it is the
# smallest WikiArt class (~100 images) and mostly overlaps Abstract_Expressionism, so it is the
# one least likely to be among LAPIS's 26. An unknown style still gets a caption (see `style_adjective`).
STYLE_ADJECTIVES: dict[str, str] = {
    "Abstract_Expressionism": "abstract expressionist",
    "Analytical_Cubism": "analytical cubist",
    "Art_Nouveau_Modern": "art nouveau",
    "Baroque": "baroque",
    "Color_Field_Painting": "color field",
    "Contemporary_Realism": "contemporary realist",
    "Cubism": "cubist",
    "Early_Renaissance": "early renaissance",
    "Expressionism": "expressionist",
    "Fauvism": "fauvist",
    "High_Renaissance": "high renaissance",
    "Impressionism": "impressionist",
    "Mannerism_Late_Renaissance": "mannerist",
    "Minimalism": "minimalist",
    "Naive_Art_Primitivism": "naive",
    "New_Realism": "new realist",
    "Northern_Renaissance": "northern renaissance",
    "Pointillism": "pointillist",
    "Pop_Art": "pop art",
    "Post_Impressionism": "post-impressionist",
    "Realism": "realist",
    "Rococo": "rococo",
    "Romanticism": "romantic",
    "Symbolism": "symbolist",
    "Synthetic_Cubism": "synthetic cubist",
    "Ukiyo_e": "ukiyo-e",
}
STYLES: tuple[str, ...] = tuple(STYLE_ADJECTIVES)

# LAPIS's 7 genres, each with the noun phrase a caption ends in ("flower painting" is already one).
GENRE_NOUNS: dict[str, str] = {
    "abstract": "abstract painting",
    "landscape": "landscape painting",
    "flower painting": "flower painting",
    "nude painting": "nude painting",
    "portrait": "portrait painting",
    "cityscape": "cityscape painting",
    "still life": "still life painting",
}
GENRES: tuple[str, ...] = tuple(GENRE_NOUNS)

def name_key(text: str) -> str:
    """Normalise a style name for matching: case, spaces, hyphens and repeated underscores ignored."""
    return "_".join(part for part in text.replace("-", "_").replace(" ", "_").split("_") if part).lower()


_STYLE_BY_KEY = {name_key(name): name for name in STYLES}


def style_adjective(style: str | None) -> str | None:
    """The adjective for a style name ("Post_Impressionism" → "post-impressionist").

    Matching ignores case, spaces vs underscores and hyphens. An unknown style is used as given,
    lower-cased with underscores as spaces ("Surrealism" → "surrealism"); None or "" → None.
    """
    if style is None or not style.strip():
        return None
    known = _STYLE_BY_KEY.get(name_key(style))
    if known is not None:
        return STYLE_ADJECTIVES[known]
    return " ".join(style.replace("_", " ").split()).lower()


def genre_noun(genre: str | None) -> str:
    """The noun phrase for a genre ("portrait" → "portrait painting"); None or "" → "painting".

    An unknown genre is used as given, with " painting" added unless it already ends in it.
    """
    if genre is None or not genre.strip():
        return "painting"
    text = " ".join(genre.replace("_", " ").split()).lower()
    if text in GENRE_NOUNS:
        return GENRE_NOUNS[text]
    return text if text.endswith("painting") else f"{text} painting"


def with_article(phrase: str) -> str:
    """Prefix "a" or "an" by the phrase's first letter.

    The first-letter rule is right for every adjective and genre above (including "ukiyo-e",
    said "oo-kee-yo"); no phrase here starts with a silent h or a "you"-sounding u.
    """
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def caption_for(style: str | None, genre: str | None) -> str:
    """Caption for a painting: "a post-impressionist landscape painting"; missing parts are left out."""
    adjective = style_adjective(style)
    noun = genre_noun(genre)
    return with_article(f"{adjective} {noun}" if adjective else noun)


def all_captions() -> list[str]:
    """Every caption the templates produce for LAPIS's styles × genres, in a fixed order.

    Styles outer, genres inner, both in the order of STYLES / GENRES; the toy tokenizer is trained
    on this list, so its order must not depend on anything at run time.
    """
    return [caption_for(style, genre) for style in STYLES for genre in GENRES]


RATING_TEMPLATE = "{caption}, rated {rating} of 10"
PROMPT_SCORE = 80.0  # the LAPIS score a sampling prompt asks for unless told otherwise (rating 8)


def rating_of(score: float) -> int:
    """A 0-100 LAPIS score as the 0-10 rating a caption carries (half up: 75 → 8, 74.9 → 7)."""
    if not 0 <= score <= 100:
        raise ValueError(f"a LAPIS score is within 0..100, got {score}")
    return int(score / 10 + 0.5)


def rated_caption(caption: str, score: float | None) -> str:
    """`caption` asking for the rating of `score` (see RATING_TEMPLATE); None → the caption alone."""
    return caption if score is None else RATING_TEMPLATE.format(caption=caption, rating=rating_of(score))


def tokenizer_corpus() -> list[str]:
    """The text the toy tokenizer learns its merges from: every caption, with and without each rating."""
    return [text for caption in all_captions()
            for text in (caption, *(rated_caption(caption, 10.0 * r) for r in range(11)))]
