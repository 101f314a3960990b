-- wrk script for bench/redis.sh: about 10k req/s over 64 connections (each waits 6 ms
-- between its requests, plus the request's own latency).
wrk.headers["X-API-Key"] = "bench"
function delay()
  return 6
end
