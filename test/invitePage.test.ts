/** The invite page: escaping, the inline QR code, no external resources, the message page. */
import { describe, expect, it } from "vitest"
import { escapeHtml, invitePageCsp, renderInvitePage, renderMessagePage } from "../src/adapters/web/invitePage.ts"
import { otpauthUri } from "../src/domain/Totp.ts"

const secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
const uri = otpauthUri({ secret, account: "alice", issuer: "Remoteler" })

const scriptOf = (html: string) => /<script[^>]*>([\s\S]*?)<\/script>/.exec(html)?.[1]

describe("escapeHtml", () => {
  it("escapes the five HTML-special characters", () => {
    expect(escapeHtml(`<a href="x" title='y'>&amp;</a>`)).toBe(
      "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
    )
  })

  it("leaves other text alone", () => {
    expect(escapeHtml("alice.smith@example.com äöü 🔑")).toBe("alice.smith@example.com äöü 🔑")
    expect(escapeHtml("")).toBe("")
  })
})

describe("renderInvitePage", () => {
  it("escapes a hostile user name and token everywhere", async () => {
    const user = `<script>alert("x")</script>'"&`
    const html = await renderInvitePage({
      token: `"><img src=x onerror=alert(1)>`,
      user,
      secondFactor: "otp",
      totpSecret: secret,
      totpUri: otpauthUri({ secret, account: user, issuer: "Remoteler" }),
      proxyAddr: `proxy.example.com"><b>`,
      expires: "<i>2030</i>"
    })
    expect(html).not.toContain("<script>alert")
    expect(html).not.toContain("<img")
    expect(html).not.toContain("<b>")
    expect(html).not.toContain("<i>")
    expect(html).toContain("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;&quot;&amp;")
    expect(html).toContain(`data-token="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"`)
    // Exactly one script element: ours.
    expect(html.match(/<script/g)).toHaveLength(1)
  })

  it("inlines the QR code as SVG and keeps the otpauth URI and the secret for manual entry", async () => {
    const html = await renderInvitePage({ token: "abc123", user: "alice", secondFactor: "otp", totpSecret: secret, totpUri: uri })
    expect(html).toMatch(/<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" viewBox="0 0 \d+ \d+"/)
    expect(html).toContain(`data-otpauth-uri="${escapeHtml(uri)}"`)
    expect(html).toContain("otpauth://totp/Remoteler:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&amp;issuer=Remoteler")
    expect(html).toContain("JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP")
    expect(html).toContain(`name="otp_token"`)
    expect(html).toContain(`autocomplete="one-time-code"`)
  })

  it("has the password, confirm and code fields and posts JSON to the invite API", async () => {
    const html = await renderInvitePage({ token: "tok", user: "alice", secondFactor: "otp", totpSecret: secret, totpUri: uri })
    expect(html).toContain(`name="password" type="password" autocomplete="new-password"`)
    expect(html).toContain(`name="confirm" type="password"`)
    expect(html).toContain(`data-token="tok"`)
    const script = scriptOf(html)!
    expect(script).toContain(`"/v1/webapi/invite/" + encodeURIComponent(token)`)
    expect(script).toContain("JSON.stringify(body)")
    expect(script).toContain("otp_token")
    expect(script).toContain("data.error.message")
    expect(script).toContain(`"tsh login --proxy=" + proxy + " --user=" + user`)
    // It parses as JavaScript.
    expect(() => new Function(script)).not.toThrow()
  })

  it("loads nothing from elsewhere", async () => {
    const html = await renderInvitePage({ token: "tok", user: "alice", secondFactor: "otp", totpSecret: secret, totpUri: uri })
    expect(html).not.toMatch(/\ssrc=/)
    expect(html).not.toMatch(/<link\b/)
    expect(html).not.toMatch(/href="https?:/)
    expect(html).not.toMatch(/url\(/)
    expect(html).not.toMatch(/@import/)
  })

  it("without a second factor shows no QR code and no code field", async () => {
    const html = await renderInvitePage({ token: "tok", user: "bob", secondFactor: "off" })
    expect(html).not.toContain("<svg")
    expect(html).not.toContain("otp_token\"")
    expect(html).toContain("Welcome, bob")
    expect(html).toContain(`name="password"`)
  })

  it("refuses otp without a secret (a caller bug)", async () => {
    await expect(renderInvitePage({ token: "tok", user: "bob", secondFactor: "otp" })).rejects.toThrow(/totpSecret/)
  })

  it("puts the CSP nonce on its script and style", async () => {
    const html = await renderInvitePage({ token: "tok", user: "bob", secondFactor: "off", nonce: "n0nce" })
    expect(html).toContain(`<script nonce="n0nce">`)
    expect(html).toContain(`<style nonce="n0nce">`)
    expect(invitePageCsp("n0nce")).toContain("script-src 'nonce-n0nce'")
    expect(invitePageCsp("n0nce")).toContain("default-src 'none'")
  })
})

describe("renderMessagePage", () => {
  it("shows an escaped title and message, with no script", () => {
    const html = renderMessagePage("Invitation expired", `The invitation for <b>alice</b> expired; ask for a new one.`)
    expect(html).toContain("<h1>Invitation expired</h1>")
    expect(html).toContain("&lt;b&gt;alice&lt;/b&gt;")
    expect(html).not.toContain("<script")
    expect(html.startsWith("<!DOCTYPE html>")).toBe(true)
  })
})

/**
 * The page's script run against a minimal stand-in for the DOM (no browser on this machine): it
 * checks what the script sends and what it shows, not the layout.
 */
describe("invite page script", () => {
  interface FakeElement {
    hidden: boolean
    textContent: string
    disabled: boolean
    value: string
  }
  const element = (): FakeElement => ({ hidden: true, textContent: "", disabled: false, value: "" })

  const run = async (
    options: { readonly secondFactor: "otp" | "off"; readonly proxyAddr?: string },
    input: { readonly password: string; readonly confirm: string; readonly otp?: string },
    answer: { readonly status: number; readonly body: string } | undefined
  ) => {
    const { runInNewContext } = await import("node:vm")
    const html = await renderInvitePage({
      token: "t/k n",
      user: "alice",
      totpSecret: secret,
      totpUri: uri,
      ...options
    })
    const attr = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(html)?.[1] ?? ""
    const fields: Record<string, FakeElement> = {
      password: { ...element(), value: input.password },
      confirm: { ...element(), value: input.confirm }
    }
    if (input.otp !== undefined) fields.otp_token = { ...element(), value: input.otp }
    let submit: ((event: { preventDefault: () => void }) => void) | undefined
    const button = element()
    const form = {
      ...element(),
      hidden: false,
      dataset: { token: attr("data-token"), user: attr("data-user"), proxy: attr("data-proxy"), minLength: "12" },
      elements: fields,
      querySelector: () => button,
      addEventListener: (_: string, listener: typeof submit) => {
        submit = listener
      }
    }
    const boxes: Record<string, FakeElement | typeof form> = {
      "invite-form": form,
      error: element(),
      success: element(),
      "login-command": element()
    }
    const requests: Array<{ url: string; init: { method: string; body: string } }> = []
    const fetch = (url: string, init: { method: string; body: string }) => {
      requests.push({ url, init })
      if (answer === undefined) return Promise.reject(new TypeError("Failed to fetch"))
      return Promise.resolve({
        ok: answer.status < 400,
        status: answer.status,
        statusText: "Status",
        text: () => Promise.resolve(answer.body)
      })
    }
    runInNewContext(scriptOf(html)!, {
      document: { getElementById: (id: string) => boxes[id] },
      location: { host: "page.example:3080" },
      fetch
    })
    submit!({ preventDefault: () => {} })
    await new Promise((resolve) => setTimeout(resolve, 10))
    return { requests, error: boxes.error as FakeElement, success: boxes.success as FakeElement, command: boxes["login-command"] as FakeElement, form }
  }

  const good = { password: "a long enough password", confirm: "a long enough password", otp: "123 456" }

  it("posts { password, otp_token } and shows the tsh login command", async () => {
    const result = await run({ secondFactor: "otp", proxyAddr: "proxy.example.com:443" }, good, { status: 200, body: "{}" })
    expect(result.requests).toHaveLength(1)
    expect(result.requests[0]!.url).toBe("/v1/webapi/invite/t%2Fk%20n")
    expect(result.requests[0]!.init.method).toBe("POST")
    expect(JSON.parse(result.requests[0]!.init.body)).toEqual({ password: good.password, otp_token: "123456" })
    expect(result.success.hidden).toBe(false)
    expect(result.form.hidden).toBe(true)
    expect(result.command.textContent).toBe("tsh login --proxy=proxy.example.com:443 --user=alice")
  })

  it("falls back to the page's host and omits otp_token without a second factor", async () => {
    const result = await run({ secondFactor: "off" }, { password: good.password, confirm: good.confirm }, { status: 200, body: "" })
    expect(JSON.parse(result.requests[0]!.init.body)).toEqual({ password: good.password })
    expect(result.command.textContent).toBe("tsh login --proxy=page.example:3080 --user=alice")
  })

  it("shows the server's error message", async () => {
    const body = JSON.stringify({ error: { message: "invalid one-time code" } })
    const result = await run({ secondFactor: "otp" }, good, { status: 400, body })
    expect(result.error.hidden).toBe(false)
    expect(result.error.textContent).toBe("invalid one-time code")
    expect(result.success.hidden).toBe(true)
  })

  it("shows the status when the error is not JSON, and a network failure", async () => {
    const status = await run({ secondFactor: "otp" }, good, { status: 502, body: "<html>bad gateway</html>" })
    expect(status.error.textContent).toBe("The server answered 502 Status.")
    const network = await run({ secondFactor: "otp" }, good, undefined)
    expect(network.error.textContent).toBe("Failed to fetch")
  })

  it("checks the form before sending", async () => {
    const mismatch = await run({ secondFactor: "otp" }, { ...good, confirm: "something else entirely" }, { status: 200, body: "" })
    expect(mismatch.requests).toHaveLength(0)
    expect(mismatch.error.textContent).toBe("The passwords do not match.")
    const short = await run({ secondFactor: "otp" }, { ...good, password: "short", confirm: "short" }, { status: 200, body: "" })
    expect(short.error.textContent).toBe("Password must be at least 12 characters long.")
    const code = await run({ secondFactor: "otp" }, { ...good, otp: "12ab" }, { status: 200, body: "" })
    expect(code.requests).toHaveLength(0)
    expect(code.error.textContent).toMatch(/6-digit code/)
  })
})
