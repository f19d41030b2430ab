# Admin, proxy and verify calls with Ruby's standard library (net/http).
# Needs TOLLGATE_ADMIN_TOKEN.
require "json"
require "net/http"
require "uri"

URL = ENV.fetch("TOLLGATE_URL", "http://127.0.0.1:8080")
ADMIN = ENV.fetch("TOLLGATE_ADMIN_TOKEN")

def call(path, body, token = nil)
  uri = URI(URL + path)
  request = Net::HTTP::Post.new(uri, "Content-Type" => "application/json")
  request["Authorization"] = "Bearer #{token}" if token
  request.body = JSON.generate(body)
  response = Net::HTTP.start(uri.host, uri.port) { |http| http.request(request) }
  raise "#{path}: #{response.code} #{response.body}" unless response.is_a?(Net::HTTPSuccess)
  [JSON.parse(response.body), response]
end

project = "ruby-#{Process.pid}"
call("/api/v1/projects", { id: project }, ADMIN)
key = call("/api/v1/keys", { project: project, plan: "free" }, ADMIN)[0]["key"]

answer, response = call("/v1/chat/completions",
                        { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] }, key)
raise "not a chat completion: #{answer}" unless answer["object"] == "chat.completion"
raise "expected 9 requests left this minute" unless response["x-ratelimit-remaining"] == "9"

verdict = call("/api/v1/keys/verify", { key: key })[0]
raise "not valid: #{verdict}" unless verdict["valid"] && verdict["code"] == "VALID"
puts "ok"
