// Key bindings for the annotator: 1 = A better, 2 = B better, 0 = no preference,
// ArrowLeft / ArrowRight = previous / next, S = save. Gradio has none of its own, so this
// script clicks the app's buttons (found by their elem_id). Keys typed into a text field,
// or pressed with Ctrl/Alt/Meta (browser shortcuts), are left alone.
(() => {
  if (window.__annotatorKeys) return;
  window.__annotatorKeys = true;
  const BUTTONS = {
    "1": "btn-a", "2": "btn-b", "0": "btn-none",
    "ArrowLeft": "btn-prev", "ArrowRight": "btn-next", "s": "btn-save", "S": "btn-save",
  };
  const NOT_TEXT = ["button", "checkbox", "radio", "submit", "reset", "range", "color", "file", "image"];
  const isTyping = (el) => {
    if (!el || el.nodeType !== 1) return false;
    if (el.isContentEditable) return true;
    const tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    return tag === "INPUT" && !NOT_TEXT.includes((el.type || "text").toLowerCase());
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    const id = BUTTONS[e.key];
    if (!id) return;
    const origin = e.composedPath ? e.composedPath()[0] : e.target;
    if (isTyping(origin) || isTyping(document.activeElement)) return;
    const button = document.getElementById(id);
    // Hidden (the name screen is up) or disabled: the key means nothing right now.
    if (!button || button.disabled || button.offsetParent === null) return;
    e.preventDefault();
    if (e.repeat) return; // a held key answers once, not once per auto-repeat
    button.click();
    button.classList.add("key-flash");
    setTimeout(() => button.classList.remove("key-flash"), 150);
  }, true);
})();
