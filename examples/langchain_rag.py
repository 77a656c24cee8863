"""Retrieval for RAG with LangChain and UniRep, fully offline.

Indexes this folder's corpus (docs/*.txt|md split into passages, images/*.png) into embedded
Qdrant in a temporary directory, retrieves for a question with two-stage Matryoshka search, and
prints the hits with their calibrated relevance scores and the prompt an LLM would receive.
No LLM runs here: pipe the prompt into yours (``prompt | llm`` in LangChain).

    python examples/langchain_rag.py "What do people eat for breakfast in Hanoi?"
    python examples/langchain_rag.py --model path/to/saved/model --k 3 "Ai ăn phở?"
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from unirep_integrations.corpus import iter_corpus
from unirep_integrations.langchain import IMAGE_KEY, UniRepEmbeddings, UniRepVectorStore
from unirep_integrations.stores import open_store

HERE = Path(__file__).resolve().parent
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the context. Cite sources as [n]. "
               "If the context does not contain the answer, say so."),
    ("human", "Context:\n{context}\n\nQuestion: {question}"),
])


def format_docs(docs: list[Document]) -> str:
    lines = []
    for n, doc in enumerate(docs, 1):
        if IMAGE_KEY in doc.metadata:  # an image hit: a vision LLM would get the picture itself
            lines.append(f"[{n}] (image {Path(doc.metadata[IMAGE_KEY]).name})")
        else:
            lines.append(f"[{n}] ({doc.metadata['source']}) {doc.page_content}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What do people eat for breakfast in Hanoi?")
    parser.add_argument("--model", default="unirep-mini", help="registered name or saved model directory")
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)

    embeddings = UniRepEmbeddings(model=args.model)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"qdrant:{tmp}/index", embeddings.client, collection="rag")
        vectorstore = UniRepVectorStore(store)
        passages = [item for item in iter_corpus([HERE / "docs"]) if item.text]
        vectorstore.add_texts([p.text for p in passages],
                              metadatas=[{"source": Path(p.metadata["file"]).name, "passage": p.metadata["passage"]}
                                         for p in passages])
        images = sorted(str(p) for p in (HERE / "images").glob("*.png"))
        vectorstore.add_images(images, metadatas=[{"source": Path(p).name} for p in images])
        print(f"indexed {len(passages)} passages and {len(images)} images with {args.model}\n")

        for doc, score in vectorstore.similarity_search_with_relevance_scores(args.question, k=args.k):
            print(f"{score:.3f}  {doc.metadata['source']:<18} {doc.page_content[:70] or '(image)'}")

        retriever = vectorstore.as_retriever(search_kwargs={"k": args.k})
        chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT
        prompt = chain.invoke(args.question)
        print("\n--- prompt for the LLM ---")
        for message in prompt.to_messages():
            print(f"[{message.type}]\n{message.content}\n")
        store.close()


if __name__ == "__main__":
    main()
