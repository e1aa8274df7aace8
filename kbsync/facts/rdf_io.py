"""RDF fact files (Turtle, N-Triples, JSON-LD) through rdflib: reader and writer.

Mapping (vocabulary `kb:` = https://kbsync.dev/ns#):

* A fact is a triple `S P O` whose predicate is a relation: `S` is an IRI with an
  `rdfs:label` (the subject text); `O` is an IRI with a label or a literal.
* Predicates map to relation ids by IRI: Wikidata `wdt:P17` (…/prop/direct/P17) -> P17,
  `<https://kbsync.dev/relation/ID>` -> ID, or any IRI declaring `kb:relationId "ID"`.
  So a Turtle file can use relations defined in a YAML file.
* A relation may be defined in RDF on its predicate: `rdfs:label`, `kb:templates ( … )`
  (ordered; the first is the main prompt) or `kb:template` (several are sorted).
* Everything a bare triple cannot say (paraphrases, locality probes, an explicit id,
  source, validity) goes on a statement node with an IRI, Wikidata-style:
  `fact:X a kb:Statement ; kb:subject S ; kb:relation P ; kb:object O ;
  kb:paraphrases ( … ) ; kb:locality ( [ kb:prompt "…" ; kb:answer "…" ] )`.
* A question-form fact (its own prompt, no relation) exists only as a statement node:
  `fact:X a kb:Statement ; kb:prompt "Question: …? Answer:" ; kb:object O` (and
  `kb:subject S` when it names the span editors key on).
* Statements on blank nodes are refused: a fact needs a name to be diffed and audited.

rdflib is imported lazily: the CLI must start fast and YAML-only projects never pay for
it. JSON-LD is parsed offline: remote `@context`/`@import` references are refused before
parsing, and an audit hook blocks any network access while rdflib runs.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import ValidationError

from kbsync.errors import FactsError
from kbsync.facts.schema import Fact, LocalityProbe, Relation
from kbsync.facts.rdf_locate import Locator, NoPositions
from kbsync.facts.rdf_offline import check_json_ld, offline
from kbsync.facts.source import FileContent, Location, gc_paused, read_text_file
from kbsync.text import UNSAFE_HINT

if TYPE_CHECKING:
    from rdflib import Graph

__all__ = ["KB_NS", "ENTITY_NS", "FACT_NS", "RELATION_NS", "WIKIDATA_DIRECT", "RDF_FORMATS",
           "read_rdf", "parse_rdf"]

KB_NS = "https://kbsync.dev/ns#"
ENTITY_NS = "https://kbsync.dev/entity/"
FACT_NS = "https://kbsync.dev/fact/"
RELATION_NS = "https://kbsync.dev/relation/"
WIKIDATA_DIRECT = "http://www.wikidata.org/prop/direct/"
# Most specific first: ".../prop/direct/P17" also starts with ".../prop/".
_WIKIDATA_PROPS = (WIKIDATA_DIRECT, "http://www.wikidata.org/prop/statement/",
                   "http://www.wikidata.org/prop/", "http://www.wikidata.org/entity/")

RDF_FORMATS = {".ttl": "turtle", ".nt": "nt", ".jsonld": "json-ld", ".json-ld": "json-ld"}
_FORMAT_ALIASES = {"turtle": "turtle", "ttl": "turtle", "nt": "nt", "ntriples": "nt",
                   "n-triples": "nt", "json-ld": "json-ld", "jsonld": "json-ld"}
_FORMAT_NAMES = {"turtle": "Turtle", "nt": "N-Triples", "json-ld": "JSON-LD"}

# Metadata vocabularies: their triples are never facts.
_IGNORED_NS = ("http://www.w3.org/1999/02/22-rdf-syntax-ns#",
               "http://www.w3.org/2000/01/rdf-schema#",
               "http://www.w3.org/2002/07/owl#",
               "http://www.w3.org/2004/02/skos/core#",
               "http://purl.org/dc/terms/", "http://purl.org/dc/elements/1.1/",
               "http://www.w3.org/ns/prov#")
_KB_TERMS = {"templates", "template", "relationId", "subject", "relation", "object",
             "paraphrases", "locality", "prompt", "answer", "id", "source", "validFrom",
             "validTo"}
OPTIONAL_TEXT = {"id": "id", "source": "source", "validFrom": "valid_from",
                  "validTo": "valid_to"}
_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


# ---------------------------------------------------------------- reading

def read_rdf(path: Path | str, *, positions: bool = False) -> FileContent:
    path = Path(path)
    fmt = RDF_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FactsError(f"not an RDF file extension: {path.suffix!r}", file=str(path),
                         hint=f"use one of {', '.join(RDF_FORMATS)}")
    text = read_text_file(path)
    return parse_rdf(text, fmt, str(path), positions=positions)


def parse_rdf(text: str, fmt: str, file: str = "<rdf>", *, positions: bool = False
              ) -> FileContent:
    """The file's relations and facts. `positions`: every item's file:line (the text is
    indexed); otherwise the locations name only the file, a bad file is still refused at
    file:line (the reader runs again with the index), and `positioned` gives the lines
    when the merge needs them."""
    fmt = _format(fmt)
    with gc_paused():
        graph = _parse_graph(text, fmt, file)
        if positions:
            return _Reader(graph, Locator(text, file, graph)).content()
        try:
            content = _Reader(graph, NoPositions(file)).content()
        except FactsError:
            return _Reader(graph, Locator(text, file, graph)).content()   # raises at a line
    content.positioned = lambda: parse_rdf(text, fmt, file, positions=True)
    return content


def _format(fmt: str) -> str:
    try:
        return _FORMAT_ALIASES[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown RDF format {fmt!r}; use turtle, nt or json-ld") from None


def _parse_graph(text: str, fmt: str, file: str) -> Graph:
    from rdflib import Graph

    if fmt == "json-ld":
        check_json_ld(text, file)
    graph = Graph()
    try:
        with offline(), warnings.catch_warnings():
            # rdflib's JSON-LD parser uses its own deprecated ConjunctiveGraph; not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            graph.parse(data=text, format=fmt)
    except FactsError:
        raise
    except Exception as err:  # rdflib raises many types; all mean "cannot parse"
        raise _parse_error(err, text, fmt, file) from None
    return graph


def _parse_error(err: Exception, text: str, fmt: str, file: str) -> FactsError:
    name = _FORMAT_NAMES[fmt]
    line = column = None
    why = str(err).strip() or type(err).__name__
    if hasattr(err, "lines") and hasattr(err, "_i"):  # notation3.BadSyntax (Turtle)
        line = err.lines + 1
        start = text.rfind("\n", 0, err._i) + 1 if isinstance(err._i, int) else None
        column = err._i - start + 1 if start is not None else None
        why = getattr(err, "_why", why)
    elif fmt == "nt":
        line = _first_bad_nt_line(text)
    else:
        found = re.search(r"line (\d+)", why)
        line = int(found.group(1)) if found else None
    return FactsError(f"invalid {name}: {why}", file=file, line=line, column=column,
                      hint=f"fix the {name} syntax at this position")


def _first_bad_nt_line(text: str) -> int | None:
    # rdflib's N-Triples errors carry no line number; N-Triples is line-based, so retry
    # line by line (only on the error path).
    from rdflib import Graph

    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                Graph().parse(data=line + "\n", format="nt")
            except Exception:
                return number
    return None


class _Reader:
    def __init__(self, graph: Graph, where: Locator | NoPositions):
        from rdflib import Namespace

        self.g, self.where = graph, where
        self.kb = Namespace(KB_NS)
        self._labels: dict[Any, list] | None = None   # node -> its rdfs:label literals

    def content(self) -> FileContent:
        content = FileContent()
        self._check_vocabulary()
        content.relations = self._relations()
        statements = self._statements()
        covered = {(s, p, o) for _, _, (s, p, o) in statements}
        for s, p, o in sorted(self.g, key=lambda t: tuple(map(str, t))):
            if not self._is_fact_predicate(p) or (s, p, o) in covered:
                continue
            location = self.where.find(s, p)
            self._check_named(s, o, location)
            fact = _build(Fact, location, subject=self._label(s), relation=self._relation_id(p),
                          object=self._object_text(o))
            content.facts.append((fact, location))
        content.facts += [(fact, location) for fact, location, _ in statements]
        return content

    # -- vocabulary ----------------------------------------------------------------

    def _check_vocabulary(self) -> None:
        for p in sorted(set(self.g.predicates()), key=str):
            if str(p).startswith(KB_NS) and str(p)[len(KB_NS):] not in _KB_TERMS:
                term = str(p)[len(KB_NS):]
                close = difflib.get_close_matches(term, sorted(_KB_TERMS), n=1)
                raise self.where.find(p).error(
                    f"unknown kbsync term kb:{term}",
                    hint=(f"did you mean kb:{close[0]}? " if close else "")
                    + f"known terms: {', '.join(sorted(_KB_TERMS))}")

    def _is_fact_predicate(self, p: Any) -> bool:
        iri = str(p)
        return not iri.startswith(KB_NS) and not iri.startswith(_IGNORED_NS)

    def _relation_id(self, p: Any) -> str:
        iri = str(p)
        for ns in _WIKIDATA_PROPS:
            if iri.startswith(ns) and re.fullmatch(r"P\d+", iri[len(ns):]):
                return iri[len(ns):]
        if iri.startswith(RELATION_NS) and len(iri) > len(RELATION_NS):
            return unquote(iri[len(RELATION_NS):])
        ids = sorted({str(x).strip() for x in self.g.objects(p, self.kb.relationId)})
        if len(ids) == 1:
            return ids[0]
        location = self.where.find(p)
        if len(ids) > 1:
            raise location.error(f"predicate <{iri}> has several kb:relationId values: {ids}")
        raise location.error(
            f"predicate <{iri}> is not mapped to a relation",
            hint="use a Wikidata property IRI (wdt:P17), <https://kbsync.dev/relation/ID>, "
                 f"or declare <{iri}> kb:relationId \"ID\"")

    # -- relations -----------------------------------------------------------------

    def _relations(self) -> list[tuple[Relation, Location]]:
        nodes = set(self.g.subjects(self.kb.templates)) | set(self.g.subjects(self.kb.template))
        nodes |= {s for s, o in self.g.subject_objects(_uri(_TYPE)) if o == self.kb.Relation}
        result = []
        for node in sorted(nodes, key=str):
            location = self.where.find(node)
            self._check_named(node, None, location, what="relation")
            templates = self._list(node, self.kb.templates, location)
            if templates is None:
                templates = sorted(str(t) for t in self.g.objects(node, self.kb.template))
            relation = _build(Relation, location, id=self._relation_id(node),
                              label=self._label(node), templates=[str(t) for t in templates])
            result.append((relation, location))
        return result

    # -- statement nodes -------------------------------------------------------------

    def _statements(self) -> list[tuple[Fact, Location, tuple]]:
        nodes = set(self.g.subjects(self.kb.subject))
        nodes |= {s for s, o in self.g.subject_objects(_uri(_TYPE)) if o == self.kb.Statement}
        result = []
        for node in sorted(nodes, key=str):
            location = self.where.find(node)
            self._check_named(node, None, location, what="statement")
            prompt = self._text(node, "prompt", location)
            if prompt is not None:     # a question-form fact: kb:prompt, kb:subject optional
                s = self._one(node, "subject", location) if (node, self.kb.subject, None) \
                    in self.g else None
                if (node, self.kb.relation, None) in self.g:
                    raise location.error(f"statement {_short(node)} has both kb:prompt and "
                                         "kb:relation", hint="a fact asks through a relation "
                                         "or its own prompt: drop one")
                p, asks = None, {"prompt": prompt}
            else:
                s = self._one(node, "subject", location)
                p = self._one(node, "relation", location)
                asks = {"relation": self._relation_id(p)}
            o = self._one(node, "object", location)
            self._check_named(s, o, location)
            if s is not None:
                asks["subject"] = self._label(s)
            extra = {field: self._text(node, term, location)
                     for term, field in OPTIONAL_TEXT.items()}
            fact = _build(Fact, location, **asks, object=self._object_text(o),
                          paraphrases=[str(x) for x in self._list(node, self.kb.paraphrases,
                                                                   location) or []],
                          locality=[self._probe(x, location)
                                    for x in self._list(node, self.kb.locality, location) or []],
                          **{k: v for k, v in extra.items() if v is not None})
            result.append((fact, location, (s, p, o)))
        return result

    def _probe(self, node: Any, location: Location) -> LocalityProbe:
        return _build(LocalityProbe, location, prompt=self._text(node, "prompt", location, True),
                      answer=self._text(node, "answer", location, True))

    # -- helpers ---------------------------------------------------------------------

    def _check_named(self, s: Any, o: Any, location: Location, what: str = "statement") -> None:
        from rdflib import BNode

        if isinstance(s, BNode) or isinstance(o, BNode):
            raise location.error(
                f"blank-node {what}: kbsync needs an IRI for every "
                f"{'subject and object' if what == 'statement' and o is not None else what}",
                hint="name the node with an IRI (e.g. <https://kbsync.dev/entity/Name>) and "
                     "give it an rdfs:label")

    def _one(self, node: Any, term: str, location: Location) -> Any:
        values = list(self.g.objects(node, self.kb[term]))
        if len(values) != 1:
            raise location.error(f"statement {_short(node)} needs exactly one kb:{term} "
                                 f"(found {len(values)})")
        return values[0]

    def _text(self, node: Any, term: str, location: Location, required: bool = False
              ) -> str | None:
        from rdflib import Literal

        values = list(self.g.objects(node, self.kb[term]))
        if not values and not required:
            return None
        if len(values) != 1 or not isinstance(values[0], Literal):
            raise location.error(f"{_short(node)} needs exactly one literal kb:{term} "
                                 f"(found {len(values)})")
        return str(values[0])

    def _list(self, node: Any, predicate: Any, location: Location) -> list | None:
        from rdflib import RDF
        from rdflib.collection import Collection

        heads = list(self.g.objects(node, predicate))
        if not heads:
            return None
        if len(heads) > 1:
            raise location.error(f"{_short(node)} has {len(heads)} {_short(predicate)} lists",
                                 hint="merge them into one ( … ) list")
        if heads[0] != RDF.nil and self.g.value(heads[0], RDF.first) is None:
            raise location.error(f"{_short(predicate)} of {_short(node)} must be an RDF list",
                                 hint='write it as ( "a" "b" )')
        try:
            return list(Collection(self.g, heads[0]))
        except ValueError:  # rdflib's answer to an rdf:rest that leads back into the list
            raise location.error(f"{_short(predicate)} of {_short(node)} is a cyclic RDF list "
                                 "(an rdf:rest points back into the list)",
                                 hint='write it as ( "a" "b" ), which always ends') from None

    def _label(self, node: Any) -> str:
        from rdflib import Literal

        if self._labels is None:   # one pass over the labels, not a graph query per node
            self._labels = {}
            for s, o in self.g.subject_objects(_uri(_LABEL)):
                if isinstance(o, Literal):
                    self._labels.setdefault(s, []).append(o)
        labels = self._labels.get(node, [])
        plain = sorted({str(o) for o in labels if not o.language})
        english = sorted({str(o) for o in labels if (o.language or "").lower().startswith("en")})
        chosen = plain or english
        if not chosen:
            raise self.where.find(node).error(f"<{node}> has no rdfs:label" + (
                " in English or without language tag" if labels else ""),
                hint=f'add <{node}> rdfs:label "Name" — kbsync uses labels as subject '
                     "and object text")
        if len(chosen) > 1:
            raise self.where.find(node).error(f"<{node}> has {len(chosen)} labels {chosen}; kbsync needs one",
                                 hint="keep one rdfs:label (others may carry language tags)")
        return chosen[0]

    def _object_text(self, o: Any) -> str:
        from rdflib import Literal

        return str(o) if isinstance(o, Literal) else self._label(o)


def _build(model: type, location: Location, **fields: Any) -> Any:
    try:
        return model(**fields)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        message = first['msg'].removeprefix('Value error, ')
        hint = UNSAFE_HINT if "control character" in message else None
        raise location.error(f"{model.__name__.lower()} {where}: {message}", hint) from None


def _short(term: Any) -> str:
    iri = str(term)
    if iri.startswith(KB_NS):
        return "kb:" + iri[len(KB_NS):]
    return f"<{iri}>"


def _uri(iri: str) -> Any:
    from rdflib import URIRef

    return URIRef(iri)
