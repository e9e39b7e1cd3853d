// Who is in the open room: user ids, your own included, each in its colour.
import { h } from "../dom.js";
import { userColor } from "../colors.js";

export function presenceList(ownId) {
  const element = h("ul", { className: "presence", testid: "presence", "aria-label": "present" });
  let users = new Set([ownId]);

  function render() {
    element.replaceChildren(...[...users].sort().map((userId) =>
      h("li", { "data-user": userId, style: `--user-color: ${userColor(userId).color}`,
        className: userId === ownId ? "me" : null }, userId)));
  }

  render();
  return {
    element,
    /** The room's users as a join ack lists them (you are present whatever it says). */
    set(ids) {
      users = new Set([ownId, ...(ids ?? [])]);
      render();
    },
    add(userId) {
      users.add(userId);
      render();
    },
    remove(userId) {
      if (userId === ownId) return; // another tab of yours left; this one is here
      users.delete(userId);
      render();
    },
    has: (userId) => users.has(userId),
  };
}
