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
