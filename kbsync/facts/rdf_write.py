"""Writing a KnowledgeBase as RDF (Turtle, N-Triples, JSON-LD) in kbsync's vocabulary;
`rdf_io` reads it back into an equal KnowledgeBase. A question-form fact is a statement
node with `kb:prompt` instead of `kb:relation` (and no bare triple: it has no predicate)."""

from __future__ import annotations

import itertools
import json
import re
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import quote

from kbsync.facts.rdf_io import (ENTITY_NS, FACT_NS, KB_NS, OPTIONAL_TEXT, RELATION_NS,
                                 WIKIDATA_DIRECT, _format)
from kbsync.facts.schema import Fact, KnowledgeBase

if TYPE_CHECKING:
    from rdflib import Graph

__all__ = ["to_graph", "write_rdf", "entity_iri", "predicate_iri"]


def entity_iri(label: str) -> str:
    """A readable, reversible IRI for a label: spaces become "_", "_" itself is escaped."""
    return ENTITY_NS + _encode(label)


def predicate_iri(relation_id: str) -> str:
    if re.fullmatch(r"P\d+", relation_id):
        return WIKIDATA_DIRECT + relation_id
    return RELATION_NS + quote(relation_id, safe="")


def _encode(text: str) -> str:
    return quote(text, safe=" ").replace("_", "%5F").replace(" ", "_")


def to_graph(kb: KnowledgeBase, *, include_relations: bool = True,
             facts: Iterable[Fact] | None = None) -> Graph:
    """The knowledge base as an RDF graph (blank nodes only inside lists, named in order
    so the output is byte-stable)."""
    from rdflib import RDF, RDFS, BNode, Graph, Literal, Namespace, URIRef

    kbv = Namespace(KB_NS)
    g = Graph(bind_namespaces="none")
    for prefix, ns in (("rdf", str(RDF)), ("rdfs", str(RDFS)), ("kb", KB_NS),
                       ("wdt", WIKIDATA_DIRECT), ("rel", RELATION_NS), ("ent", ENTITY_NS),
                       ("fact", FACT_NS)):
        g.bind(prefix, Namespace(ns))
    counter = itertools.count()

    def add_list(node: Any, predicate: Any, items: list) -> None:
        if not items:
            return
        cells = [BNode(f"b{next(counter)}") for _ in items]
        for i, (cell, item) in enumerate(zip(cells, items)):
            g.add((cell, RDF.first, item))
            g.add((cell, RDF.rest, cells[i + 1] if i + 1 < len(cells) else RDF.nil))
        g.add((node, predicate, cells[0]))

    if include_relations:
        for relation in sorted(kb.relations.values(), key=lambda r: r.id):
            p = URIRef(predicate_iri(relation.id))
            g.add((p, RDF.type, kbv.Relation))
            g.add((p, RDFS.label, Literal(relation.label)))
            add_list(p, kbv.templates, [Literal(t) for t in relation.templates])
    chosen = kb.facts.values() if facts is None else facts
    for fact in sorted(chosen, key=lambda f: f.key):
        o = URIRef(entity_iri(fact.object))
        g.add((o, RDFS.label, Literal(fact.object)))
        s = None if fact.subject is None else URIRef(entity_iri(fact.subject))
        if s is not None:
            g.add((s, RDFS.label, Literal(fact.subject)))
        if fact.prompt is None:
            p = URIRef(predicate_iri(fact.relation))
            g.add((s, p, o))
            if not _needs_statement(fact):
                continue
        node = URIRef(FACT_NS + _encode(fact.key))
        g.add((node, RDF.type, kbv.Statement))
        if fact.prompt is not None:       # a question-form fact: no triple, its prompt
            g.add((node, kbv.prompt, Literal(fact.prompt)))
        else:
            g.add((node, kbv.relation, p))
        if s is not None:
            g.add((node, kbv.subject, s))
        g.add((node, kbv.object, o))
        add_list(node, kbv.paraphrases, [Literal(x) for x in fact.paraphrases])
        probes = []
        for probe in fact.locality:
            cell = BNode(f"b{next(counter)}")
            g.add((cell, kbv.prompt, Literal(probe.prompt)))
            g.add((cell, kbv.answer, Literal(probe.answer)))
            probes.append(cell)
        add_list(node, kbv.locality, probes)
        for term, field in OPTIONAL_TEXT.items():
            if getattr(fact, field) is not None:
                g.add((node, kbv[term], Literal(getattr(fact, field))))
    return g


def _needs_statement(fact: Fact) -> bool:
    return bool(fact.paraphrases or fact.locality) or any(
        getattr(fact, field) is not None for field in OPTIONAL_TEXT.values())


def write_rdf(kb: KnowledgeBase, fmt: str = "turtle", *, include_relations: bool = True,
              facts: Iterable[Fact] | None = None, header: str | None = None) -> str:
    """Serialize to Turtle, N-Triples or JSON-LD (with an inline context)."""
    fmt = _format(fmt)
    g = to_graph(kb, include_relations=include_relations, facts=facts)
    if fmt == "nt":
        text = "".join(sorted(g.serialize(format="nt").splitlines(keepends=True)))
    elif fmt == "json-ld":
        context = {prefix: str(ns) for prefix, ns in g.namespaces()}
        doc = json.loads(g.serialize(format="json-ld", context=context, auto_compact=True))
        # rdflib's node order follows set iteration (hash seed); sort it for stable files.
        if isinstance(doc, dict) and isinstance(doc.get("@graph"), list):
            doc["@graph"].sort(key=lambda node: str(node.get("@id", "")))
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    else:
        text = g.serialize(format="turtle")
    if header and fmt != "json-ld":  # JSON has no comments
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + "\n" + text
    return text
