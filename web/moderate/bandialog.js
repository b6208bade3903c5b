// The ban dialog: a preset or a validated custom length, a scope, a reason. No prompt chains.
//
// The server validates again (moderation/ban_terms.py); its refusal is shown in the
// dialog, which stays open until the ban is made or the moderator cancels.

const $ = (sel) => document.querySelector(sel);

/**
 * Ask for a ban. `target` = {title, reason, hasIdentity, hasAddress, sharing}, where
 * `sharing` is how many people online share the address now. `submit({duration, scope,
 * reason})` makes the ban and throws an Error whose message is shown on refusal.
 * Resolves with the made ban, or null when cancelled.
 */
export function askBan(target, submit) {
  const dialog = $("#ban-dialog");
  const form = $("#ban-form");
  const error = $("#ban-error");
  form.reset();
  error.textContent = "";
  $("#ban-who").textContent = target.title;
  $("#ban-reason").value = target.reason ?? "";
  const scopes = {
    identity: target.hasIdentity !== false,
    "identity+address": target.hasIdentity !== false && target.hasAddress !== false,
    address: target.hasAddress !== false,
  };
  for (const input of form.querySelectorAll('input[name="scope"]')) {
    input.disabled = !scopes[input.value];
    input.checked = false;
  }
  const first = form.querySelector('input[name="scope"]:not(:disabled)');
  if (first) first.checked = true;
  const sharing = Number(target.sharing ?? 0);
  $("#ban-address-note").textContent = target.hasAddress === false
    ? "No address is known for this person."
    : `${sharing} ${sharing === 1 ? "person" : "people"} online now share this address` +
      (sharing > 1 ? ": an address ban shuts all of them out (a carrier NAT, an office, a school)." : ".");
  return new Promise((resolve) => {
    const onSubmit = async (event) => {
      event.preventDefault();
      if (event.submitter?.value === "cancel") return finish(null);
      const data = new FormData(form);
      let duration = data.get("length");
      if (duration === "custom") {
        const n = Number($("#ban-custom-n").value);
        if (!Number.isInteger(n) || n < 1 || n > 999999) {
          error.textContent = "Custom length: a whole number from 1 to 999999.";
          $("#ban-custom-n").focus();
          return;
        }
        duration = `${n}${$("#ban-custom-unit").value}`;
      }
      const reason = String(data.get("reason") ?? "").trim();
      if (!reason) {
        error.textContent = "Say why: the person is shown the reason.";
        $("#ban-reason").focus();
        return;
      }
      const scope = data.get("scope");
      if (!scope) {
        error.textContent = "Choose who the ban reaches.";
        return;
      }
      try {
        finish(await submit({ duration, scope, reason }));
      } catch (e) {
        error.textContent = e.message;
      }
    };
    const onCancel = () => finish(null);
    function finish(value) {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    }
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    form.querySelector('input[name="length"][value="24h"]').focus();
  });
}
