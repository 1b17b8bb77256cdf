// API client configuration
export const config = {
  baseUrl: "https://api.example.org/v2",
  mapsKey: "@FAKE:gcp-api@",
  retries: 3,
};

const demoSession = "@FAKE:jwt@";

export function headers(session = demoSession) {
  return { Authorization: `Bearer ${session}` };
}
