"""Folders, tags and pins as domain rules (no I/O): a hypothesis state machine moves, renames, deletes and
files at random against a folder tree and its chats, and after every step there is no cycle, no folder
whose parent is gone, no chat in a folder that does not exist, and no chat lost; the tree also equals a
plain model of it, and rebuilding it from its own events gives the same tree."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from domain.chats import MAX_TAGS, Chat, normalise_tags
from domain.errors import Conflict, Invalid, NotFound
from domain.folders import MAX_FOLDER_DEPTH, FolderTree, check_folder_name

OWNER = uuid.UUID(int=7)
NAMES = st.sampled_from(["Work", "work", "Home", "Ideas", "Q3", "Archive 2024", "ideas "])


class FolderMoves(RuleBasedStateMachine):
    folders = Bundle("folders")

    def __init__(self) -> None:
        super().__init__()
        self.tree = FolderTree(tenant_id="t", owner_id=OWNER)
        self.parent: dict[str, str | None] = {}  # the model: folder -> parent
        self.deleted: set[str] = set()
        self.chats = [Chat(tenant_id="t", owner_id=OWNER, title=f"c{i}", source="api") for i in range(4)]

    def _subtree(self, folder: str) -> set[str]:
        out = {folder}
        grew = True
        while grew:
            more = {f for f, p in self.parent.items() if p in out} - out
            grew = bool(more)
            out |= more
        return out

    def _depth(self, folder: str) -> int:
        depth, at = 1, self.parent[folder]
        while at is not None:
            depth, at = depth + 1, self.parent[at]
        return depth

    def _taken(self, parent: str | None, name: str, but: str | None = None) -> bool:
        wanted = check_folder_name(name).casefold()
        return any(
            p == parent and f != but and self.tree.folders[f]["name"].casefold() == wanted for f, p in self.parent.items()
        )

    @rule(target=folders, name=NAMES, parent=st.none() | folders)
    def create(self, name: str, parent: str | None) -> str:
        folder = str(uuid.uuid4())
        if parent in self.deleted:
            with pytest.raises(NotFound):
                self.tree.create_folder(folder, name, parent)
        elif self._taken(parent, name):
            with pytest.raises(Conflict, match="FOLDER_EXISTS"):
                self.tree.create_folder(folder, name, parent)
        elif parent is not None and self._depth(parent) >= MAX_FOLDER_DEPTH:
            with pytest.raises(Invalid, match="FOLDER_TOO_DEEP"):
                self.tree.create_folder(folder, name, parent)
        else:
            self.tree.create_folder(folder, name, parent)
            self.parent[folder] = parent
            return folder
        self.deleted.add(folder)  # never made: a name for a folder that does not exist
        return folder

    @rule(folder=folders, to=st.none() | folders)
    def move(self, folder: str, to: str | None) -> None:
        target = to
        if folder in self.deleted or target in self.deleted:
            with pytest.raises(NotFound):
                self.tree.move_folder(folder, target)
        elif target is not None and target in self._subtree(folder):
            with pytest.raises(Conflict, match="FOLDER_CYCLE"):
                self.tree.move_folder(folder, target)
        elif target != self.parent[folder] and self._taken(target, self.tree.folders[folder]["name"], but=folder):
            with pytest.raises(Conflict, match="FOLDER_EXISTS"):
                self.tree.move_folder(folder, target)
        else:
            try:
                self.tree.move_folder(folder, target)
            except Invalid as e:  # too deep: the tree is as it was
                assert e.code == "FOLDER_TOO_DEEP"
                return
            self.parent[folder] = target

    @rule(folder=folders, name=NAMES)
    def rename(self, folder: str, name: str) -> None:
        if folder in self.deleted:
            with pytest.raises(NotFound):
                self.tree.rename_folder(folder, name)
        elif self._taken(self.parent[folder], name, but=folder):
            with pytest.raises(Conflict):
                self.tree.rename_folder(folder, name)
        else:
            self.tree.rename_folder(folder, name)
            assert self.tree.folders[folder]["name"] == check_folder_name(name)

    @rule(folder=consumes(folders))
    def delete(self, folder: str) -> None:
        if folder in self.deleted:
            with pytest.raises(NotFound):
                self.tree.delete_folder(folder)
            return
        doomed = self._subtree(folder)
        assert set(self.tree.delete_folder(folder)) == doomed
        for f in doomed:
            del self.parent[f]
        self.deleted |= doomed

    @rule(chat=st.integers(0, 3), folder=st.none() | folders)
    def file(self, chat: int, folder: str | None) -> None:
        """As ``Chats.update`` files a chat: only into a folder the tree has."""
        if folder is not None:
            if folder in self.deleted:
                with pytest.raises(NotFound):
                    self.tree.check_folder(folder)
                return
            self.tree.check_folder(folder)
        self.chats[chat].file_in(folder)

    @invariant()
    def no_cycle_and_no_orphan_folder(self) -> None:
        for folder, info in self.tree.folders.items():
            seen = {folder}
            at = info["parent_id"]
            while at is not None:
                assert at in self.tree.folders, "a folder's parent is gone"
                assert at not in seen, "a cycle"
                seen.add(at)
                at = self.tree.folders[at]["parent_id"]
            assert len(seen) <= MAX_FOLDER_DEPTH

    @invariant()
    def the_tree_is_the_model(self) -> None:
        assert {f: i["parent_id"] for f, i in self.tree.folders.items()} == self.parent

    @invariant()
    def no_chat_is_lost_or_in_a_missing_folder(self) -> None:
        assert len(self.chats) == 4
        for chat in self.chats:
            where = self.tree.effective(chat.folder_id)
            assert where is None or where in self.tree.folders
            assert where == (chat.folder_id if chat.folder_id in self.parent else None)

    def teardown(self) -> None:
        """The events rebuild the same tree (what a reload from the event store does)."""
        events = self.tree.collect_events()
        copy: FolderTree | None = None
        for e in events:
            copy = e.mutate(copy)
        assert copy is not None and copy.folders == self.tree.folders


TestFolderMoves = FolderMoves.TestCase
TestFolderMoves.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_tree_too_deep_is_refused_both_ways() -> None:
    tree = FolderTree(tenant_id="t", owner_id=OWNER)
    chain = [str(uuid.uuid4()) for _ in range(MAX_FOLDER_DEPTH)]
    for i, folder in enumerate(chain):
        tree.create_folder(folder, f"f{i}", chain[i - 1] if i else None)
    with pytest.raises(Invalid, match="FOLDER_TOO_DEEP"):
        tree.create_folder(str(uuid.uuid4()), "one more", chain[-1])
    other = str(uuid.uuid4())
    tree.create_folder(other, "top", None)
    tree.create_folder(str(uuid.uuid4()), "under top", other)
    with pytest.raises(Invalid, match="FOLDER_TOO_DEEP"):  # a subtree of two under the deepest
        tree.move_folder(other, chain[-2])
    assert tree.path(chain[2]) == ["f0", "f1", "f2"]


def test_names_and_tags_are_normalised_and_bounded() -> None:
    assert check_folder_name("  Q3   plans ") == "Q3 plans"
    for bad in ("", "   ", "x" * 101, "a\x00b"):
        with pytest.raises(Invalid, match="INVALID_FOLDER_NAME"):
            check_folder_name(bad)
    assert normalise_tags(["Python", " python ", "Machine   Learning", "ÄPFEL"]) == ["python", "machine learning", "äpfel"]
    for bad in ([""], ["x" * 51], ["a\nb"]):
        with pytest.raises(Invalid, match="INVALID_TAG"):
            normalise_tags(bad)
    with pytest.raises(Invalid, match="TOO_MANY_TAGS"):
        normalise_tags([f"t{i}" for i in range(MAX_TAGS + 1)])


def test_organising_a_chat_records_only_changes() -> None:
    chat = Chat(tenant_id="t", owner_id=OWNER, title="Plans", source="api")
    chat.set_pinned(True)
    chat.set_pinned(True)
    chat.set_tags(["Work", "work"])
    chat.set_tags(["work"])
    chat.file_in("f1")
    chat.file_in("f1")
    chat.file_in(None)
    kinds = [type(e).__name__ for e in chat.collect_events()]
    assert kinds == ["ChatCreated", "ChatPinned", "ChatTagsChanged", "ChatFiled", "ChatFiled"]
    assert (chat.pinned, chat.tags, chat.folder_id) == (True, ("work",), None)
