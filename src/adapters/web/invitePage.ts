/**
 * The invite page at `/web/invite/<token>`: a new local user sets a password and, when the cluster
 * asks for a second factor, registers a TOTP authenticator by scanning a QR code.
 *
 * Self-contained: inline CSS and JS, the QR code as inline SVG, nothing fetched from elsewhere, so
 * the page works on an air-gapped cluster and can be served under a strict Content-Security-Policy
 * (pass a `nonce` and send `invitePageCsp(nonce)`). Every interpolated value goes through
 * `escapeHtml`; the script reads its data from `data-*` attributes and writes with `textContent`.
 *
 * The form POSTs JSON `{ password, otp_token }` (WebApi.InviteCompleteRequest) to
 * `/v1/webapi/invite/<token>` and shows either the server's `{ error: { message } }` or how to log in.
 */
import QRCode from "qrcode"

const HTML_ESCAPES: Readonly<Record<string, string>> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;"
}

/** Escapes text for HTML element content and quoted attribute values. */
export const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (char) => HTML_ESCAPES[char] ?? char)

/**
 * The Content-Security-Policy to send with a page rendered with `nonce`: nothing loads from
 * anywhere, only our own inline script and style run, fetch may reach only this origin.
 */
export const invitePageCsp = (nonce: string): string =>
  [
    "default-src 'none'",
    `script-src 'nonce-${nonce}'`,
    `style-src 'nonce-${nonce}'`,
    "connect-src 'self'",
    "img-src data:",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'"
  ].join("; ")

export interface InvitePageOptions {
  readonly token: string
  readonly user: string
  readonly secondFactor: "otp" | "off"
  /** Base32 TOTP secret, shown for manual entry; required when secondFactor is otp. */
  readonly totpSecret?: string
  /** `otpauth://totp/...` URI, the QR code's content; required when secondFactor is otp. */
  readonly totpUri?: string
  /** The proxy's public address for the `tsh login` hint; the page's own host when absent. */
  readonly proxyAddr?: string
  /** RFC 3339 expiry of the invite, shown to the user. */
  readonly expires?: string
  /** CSP nonce for the inline `<script>` and `<style>` (see `invitePageCsp`). */
  readonly nonce?: string
}

const STYLE = `
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#111827}
main{max-width:28rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:.75rem;box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{font-size:1.4rem;margin:0 0 .5rem}
p{margin:.5rem 0}
.muted{color:#6b7280;font-size:.9rem}
.qr{display:block;width:14rem;height:14rem;margin:1rem auto}
.qr svg{width:100%;height:100%}
code,.secret{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.secret{display:block;text-align:center;font-size:1.05rem;letter-spacing:.05em;padding:.5rem;background:#f9fafb;border:1px solid #e5e7eb;border-radius:.375rem;word-break:break-all;user-select:all}
label{display:block;margin-top:1rem;font-weight:600}
input{display:block;width:100%;margin-top:.25rem;padding:.55rem .7rem;font:inherit;border:1px solid #d1d5db;border-radius:.375rem}
input:focus{outline:2px solid #2563eb;outline-offset:-1px}
button{margin-top:1.5rem;width:100%;padding:.65rem;font:inherit;font-weight:600;color:#fff;background:#2563eb;border:0;border-radius:.375rem;cursor:pointer}
button:disabled{background:#93c5fd;cursor:wait}
.error{margin-top:1rem;padding:.6rem .8rem;color:#991b1b;background:#fef2f2;border:1px solid #fecaca;border-radius:.375rem}
.success{margin-top:1rem;padding:.6rem .8rem;color:#065f46;background:#ecfdf5;border:1px solid #a7f3d0;border-radius:.375rem}
.success code{display:block;margin-top:.5rem;padding:.5rem;background:#fff;border-radius:.25rem;word-break:break-all;user-select:all}
[hidden]{display:none!important}
`

// Runs in the browser. Data comes from data-* attributes and output goes through textContent, so
// nothing the server or the user supplies is ever parsed as HTML.
const SCRIPT = `
(function () {
  "use strict";
  var form = document.getElementById("invite-form");
  var errorBox = document.getElementById("error");
  var successBox = document.getElementById("success");
  var button = form.querySelector("button");
  var token = form.dataset.token;
  var user = form.dataset.user;
  var proxy = form.dataset.proxy || location.host;
  var minLength = Number(form.dataset.minLength) || 12;
  function showError(message) {
    successBox.hidden = true;
    errorBox.textContent = message;
    errorBox.hidden = false;
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    var password = form.elements.password.value;
    var confirm = form.elements.confirm.value;
    var otp = form.elements.otp_token ? form.elements.otp_token.value.replace(/\\s+/g, "") : undefined;
    if (Array.from(password).length < minLength) { showError("Password must be at least " + minLength + " characters long."); return; }
    if (password !== confirm) { showError("The passwords do not match."); return; }
    if (otp !== undefined && !/^\\d{6}$/.test(otp)) { showError("Enter the 6-digit code from your authenticator app."); return; }
    var body = { password: password };
    if (otp !== undefined) body.otp_token = otp;
    button.disabled = true;
    fetch("/v1/webapi/invite/" + encodeURIComponent(token), {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var message = data && data.error && typeof data.error.message === "string"
            ? data.error.message
            : "The server answered " + response.status + " " + response.statusText + ".";
          throw new Error(message);
        }
      });
    }).then(function () {
      form.hidden = true;
      errorBox.hidden = true;
      document.getElementById("login-command").textContent = "tsh login --proxy=" + proxy + " --user=" + user;
      successBox.hidden = false;
    }).catch(function (error) {
      showError(error && error.message ? error.message : "The request failed.");
    }).then(function () {
      button.disabled = false;
    });
  });
})();
`

const nonceAttr = (nonce: string | undefined) => (nonce === undefined ? "" : ` nonce="${escapeHtml(nonce)}"`)

const page = (title: string, body: string, options: { readonly nonce?: string | undefined; readonly script?: string }) =>
  `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>${escapeHtml(title)}</title>
<style${nonceAttr(options.nonce)}>${STYLE}</style>
</head>
<body>
<main>
${body}
</main>
${options.script === undefined ? "" : `<script${nonceAttr(options.nonce)}>${options.script}</script>\n`}</body>
</html>
`

/** Groups a base32 secret in fours for reading and typing. */
const groupSecret = (secret: string) => secret.replace(/(.{4})(?=.)/g, "$1 ")

/**
 * The invite page. Async because the QR code is rendered (to SVG, locally). Throws when
 * secondFactor is otp but the TOTP secret or URI is missing: that is a caller bug.
 */
export const renderInvitePage = async (options: InvitePageOptions): Promise<string> => {
  const { token, user, secondFactor, totpSecret, totpUri, proxyAddr, expires, nonce } = options
  let totpSection = ""
  let otpField = ""
  if (secondFactor === "otp") {
    if (totpSecret === undefined || totpUri === undefined) {
      throw new Error("renderInvitePage: second factor otp needs totpSecret and totpUri")
    }
    // qrcode draws the SVG from the URI's bits only (paths, no text), so its markup is safe to inline.
    const svg = await QRCode.toString(totpUri, { type: "svg", errorCorrectionLevel: "M", margin: 2 })
    totpSection = `
<h2>1. Register an authenticator</h2>
<p>Scan this code with an authenticator app (Google Authenticator, Authy, 1Password, ...).</p>
<a class="qr" id="totp-qr" href="${escapeHtml(totpUri)}" data-otpauth-uri="${escapeHtml(totpUri)}" title="Open in an authenticator app" aria-label="QR code for your authenticator app">${svg}</a>
<p class="muted">Or enter this key by hand (time-based, SHA-1, 6 digits, 30 seconds):</p>
<code class="secret" id="totp-secret">${escapeHtml(groupSecret(totpSecret))}</code>
<h2>2. Choose a password</h2>`
    otpField = `
<label for="otp_token">Code from your authenticator app</label>
<input id="otp_token" name="otp_token" type="text" inputmode="numeric" pattern="[0-9 ]*" maxlength="7" autocomplete="one-time-code" required>`
  }
  const body = `<h1>Welcome, ${escapeHtml(user)}</h1>
<p>Set up your Remoteler account <strong>${escapeHtml(user)}</strong>.</p>
${expires === undefined ? "" : `<p class="muted">This invitation expires at <time datetime="${escapeHtml(expires)}">${escapeHtml(expires)}</time>.</p>`}
${totpSection}
<form id="invite-form" method="post" novalidate data-token="${escapeHtml(token)}" data-user="${escapeHtml(user)}" data-proxy="${escapeHtml(proxyAddr ?? "")}" data-min-length="12">
<input type="text" name="username" value="${escapeHtml(user)}" autocomplete="username" hidden readonly>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="new-password" minlength="12" maxlength="128" required>
<p class="muted">At least 12 characters.</p>
<label for="confirm">Confirm password</label>
<input id="confirm" name="confirm" type="password" autocomplete="new-password" minlength="12" maxlength="128" required>${otpField}
<button type="submit">Create account</button>
</form>
<div id="error" class="error" role="alert" hidden></div>
<div id="success" class="success" role="status" hidden>
<strong>Your account is ready.</strong> Log in from a terminal with:
<code id="login-command"></code>
</div>`
  return page("Remoteler: accept invitation", body, { nonce, script: SCRIPT })
}

/** A plain page with a title and a message, e.g. for an expired or already used invitation. */
export const renderMessagePage = (title: string, message: string, options: { readonly nonce?: string } = {}): string =>
  page(`Remoteler: ${title}`, `<h1>${escapeHtml(title)}</h1>\n<p>${escapeHtml(message)}</p>`, { nonce: options.nonce })
