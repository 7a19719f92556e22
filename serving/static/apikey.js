// The API key field of the gateway's pages (the playground at / and /visualize). A gateway with CHARLM_API_KEYS
// answers every API call without a key with 401; the pages themselves are open. The key typed here is kept in this
// browser's localStorage for this origin (both pages share it; clearing the field forgets it) and sent with each
// call the page makes as `Authorization: Bearer <key>`, as OpenAI's clients send theirs. Without keys configured
// the field stays empty and nothing is sent.
"use strict";

const charlmKey = (() => {
  const STORE = "charlm.apiKey";
  const field = document.getElementById("apikey");
  try {
    if (!field.value) field.value = localStorage.getItem(STORE) || "";
  } catch (e) { /* storage disabled: the field still works for this page */ }
  field.addEventListener("input", () => {
    const key = field.value.trim();
    try {
      if (key) localStorage.setItem(STORE, key);
      else localStorage.removeItem(STORE);
    } catch (e) { /* as above */ }
  });
  return {
    field,
    // Request headers for a JSON call, with the key when there is one.
    headers() {
      const h = { "Content-Type": "application/json" };
      const key = field.value.trim();
      if (key) h["Authorization"] = "Bearer " + key;
      return h;
    },
    // What to tell the user about a refused call: a 401 means the field is empty or the key is wrong.
    explain(status, message) {
      if (status !== 401) return message;
      return (field.value.trim() ? "the API key was refused" : "this gateway needs an API key")
        + ": enter it in the API key field (" + message + ")";
    },
  };
})();
