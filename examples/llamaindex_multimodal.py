"""Multimodal retrieval with LlamaIndex and UniRep, fully offline.

Indexes this folder's corpus (docs/*.txt|md split into passages, images/*.png) into a
``MultiModalVectorStoreIndex`` on embedded Qdrant in a temporary directory, with UniRep as both
the text and the image embedding model, then runs text->text, text->image and image->image
retrieval; then the same corpus through ``UniRepRetriever`` on a UniRep store (two-stage search,
calibrated scores instead of LlamaIndex's raw cosines).

    python examples/llamaindex_multimodal.py "Vietnamese noodle soup" --image examples/images/pizza.png
    python examples/llamaindex_multimodal.py --model path/to/saved/model
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

from llama_index.core import Settings, StorageContext
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, TextNode
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from unirep_integrations.corpus import iter_corpus
from unirep_integrations.llamaindex import UniRepEmbedding, UniRepRetriever
from unirep_integrations.stores import open_store

HERE = Path(__file__).resolve().parent


def load_nodes(folder: Path) -> list[TextNode]:
    """Passages as TextNodes, pictures as ImageNodes (file name kept out of the embedded text)."""
    nodes: list[TextNode] = []
    for item in iter_corpus([folder / "docs", folder / "images"]):
        name = Path(item.metadata["file"]).name
        if item.text:
            nodes.append(TextNode(text=item.text, metadata={"file_name": name},
                                  excluded_embed_metadata_keys=["file_name"]))
        else:
            nodes.append(ImageNode(image_path=item.image, metadata={"file_name": name, "file_path": item.image}))
    return nodes


def show(title: str, hits: list) -> None:
    print(f"\n{title}")
    for hit in hits:
        what = hit.node.image_path if isinstance(hit.node, ImageNode) else hit.node.get_content()[:70]
        print(f"  {hit.score:.3f}  {hit.node.metadata['file_name']:<18} {what}")


# Qdrant local mode has no payload indexes; llama-index-vector-stores-qdrant creates one anyway.
warnings.filterwarnings("ignore", message="Payload indexes have no effect")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", nargs="?", default="Vietnamese noodle soup")
    parser.add_argument("--image", default=str(HERE / "images" / "steaming-bowl.png"), help="query image")
    parser.add_argument("--model", default="unirep-mini", help="registered name or saved model directory")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args(argv)

    embed = UniRepEmbedding(args.model)
    Settings.embed_model = embed  # LlamaIndex's default is OpenAI
    with tempfile.TemporaryDirectory() as tmp:
        client = QdrantClient(path=f"{tmp}/qdrant")  # Qdrant local mode: no server
        storage = StorageContext.from_defaults(vector_store=QdrantVectorStore("text", client=client),
                                               image_store=QdrantVectorStore("images", client=client))
        nodes = load_nodes(HERE)
        # image_embed_model must be given: the default is a CLIP model that downloads
        index = MultiModalVectorStoreIndex(nodes, storage_context=storage, embed_model=embed, image_embed_model=embed)
        print(f"indexed {len(nodes)} nodes with {args.model}")

        retriever = index.as_retriever(similarity_top_k=args.k, image_similarity_top_k=args.k)
        show(f"text -> text: {args.query!r}", retriever.text_retrieve(args.query))
        show(f"text -> image: {args.query!r}", retriever.text_to_image_retrieve(args.query))
        show(f"image -> image: {Path(args.image).name}", retriever.image_to_image_retrieve(args.image))
        client.close()

        store = open_store(f"qdrant:{tmp}/unirep", embed.client, collection="examples")
        pictures = [n for n in nodes if isinstance(n, ImageNode)]
        passages = [n for n in nodes if not isinstance(n, ImageNode)]
        store.add(texts=[n.text for n in passages], metadatas=[n.metadata for n in passages])
        store.add(images=[n.image_path for n in pictures], metadatas=[n.metadata for n in pictures])
        unirep_retriever = UniRepRetriever(store, similarity_top_k=args.k)
        show(f"UniRepRetriever (calibrated): {args.query!r}", unirep_retriever.retrieve(args.query))
        show(f"UniRepRetriever (calibrated): {Path(args.image).name}", unirep_retriever.retrieve_by_image(args.image))
        store.close()


if __name__ == "__main__":
    main()
