//! Narrowing an export stream to the explorer's filters the export API does not take
//! (model, provider, endpoint, status): records pass through as the API wrote them, one
//! chunk at a time, in constant memory. CSV records are split by RFC 4180 (a quoted
//! field may hold commas, quotes and newlines); NDJSON by line.

/// What a row must match; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct RowFilter {
    pub model: String,
    pub provider: String,
    pub endpoint: String,
    /// `2xx`, `4xx`, `5xx` or a status code.
    pub status: String,
}

impl RowFilter {
    pub fn is_empty(&self) -> bool {
        self.model.is_empty() && self.provider.is_empty() && self.endpoint.is_empty() && self.status.is_empty()
    }

    /// Whether a row with these values is kept (`field` reads one by its name).
    pub fn keeps<'a>(&self, field: impl Fn(&str) -> Option<&'a str>) -> bool {
        let is = |name: &str, want: &str| want.is_empty() || field(name) == Some(want);
        is("model", &self.model)
            && is("provider", &self.provider)
            && is("endpoint", &self.endpoint)
            && status_matches(&self.status, field("status").and_then(|s| s.parse().ok()).unwrap_or(0))
    }
}

/// Whether `status` passes a status filter (`""` passes all).
pub fn status_matches(filter: &str, status: u64) -> bool {
    match filter {
        "" => true,
        "2xx" => (200..300).contains(&status),
        "4xx" => (400..500).contains(&status),
        "5xx" => (500..600).contains(&status),
        exact => exact.parse::<u64>().is_ok_and(|s| s == status),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

/// The filter over a stream of export chunks.
pub struct ExportFilter {
    format: Format,
    filter: RowFilter,
    /// The start of a record whose end has not come yet.
    carry: Vec<u8>,
    /// CSV: the header's column names, once read.
    columns: Option<Vec<String>>,
}

impl ExportFilter {
    pub fn new(format: Format, filter: RowFilter) -> Self {
        Self { format, filter, carry: Vec::new(), columns: None }
    }

    /// The kept records completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut quoted = false;
        let mut i = 0;
        while i < self.carry.len() {
            match self.carry[i] {
                b'"' if self.format == Format::Csv => quoted = !quoted,
                b'\n' if !quoted => {
                    let record = self.carry[start..=i].to_vec();
                    self.record(&record, &mut out);
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        self.carry.drain(..start);
        out
    }

    /// What is left at the end of the stream (a last record without a newline).
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        let mut out = Vec::new();
        if !rest.is_empty() {
            self.record(&rest, &mut out);
        }
        out
    }

    fn record(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(record);
        let line = text.trim_end_matches(['\r', '\n']);
        let keep = match self.format {
            Format::Ndjson => {
                line.is_empty()
                    || serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                        let as_text = |name: &str| -> Option<String> {
                            v.get(name).map(|f| f.as_str().map(str::to_owned).unwrap_or_else(|| f.to_string()))
                        };
                        let fields: Vec<(String, Option<String>)> = ["model", "provider", "endpoint", "status"]
                            .iter()
                            .map(|n| ((*n).to_owned(), as_text(n)))
                            .collect();
                        self.filter.keeps(|name| fields.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref()))
                    })
            }
            Format::Csv => match &self.columns {
                None => {
                    self.columns = Some(csv_fields(line));
                    true
                }
                Some(columns) => {
                    let values = csv_fields(line);
                    self.filter.keeps(|name| {
                        columns.iter().position(|c| c == name).and_then(|i| values.get(i)).map(String::as_str)
                    })
                }
            },
        };
        if keep {
            out.extend_from_slice(record);
        }
    }
}

/// The fields of one CSV record (RFC 4180: quoted fields, doubled quotes).
fn csv_fields(record: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: Format, filter: RowFilter, input: &str, cut: usize) -> String {
        let mut f = ExportFilter::new(format, filter);
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(cut) {
            out.extend(f.push(piece));
        }
        out.extend(f.finish());
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn csv_records_are_kept_by_their_columns_however_the_stream_is_cut() {
        let input = "id,model,status,endpoint\r\na,gpt-4o,200,chat\r\nb,\"gpt,\"\"odd\"\"\nmodel\",200,chat\r\nc,gpt-4o,429,chat\r\n";
        let filter = RowFilter { model: "gpt-4o".into(), ..RowFilter::default() };
        for cut in [1, 3, 7, 1000] {
            assert_eq!(
                run(Format::Csv, filter.clone(), input, cut),
                "id,model,status,endpoint\r\na,gpt-4o,200,chat\r\nc,gpt-4o,429,chat\r\n"
            );
        }
        let odd = RowFilter { model: "gpt,\"odd\"\nmodel".into(), ..RowFilter::default() };
        assert!(run(Format::Csv, odd, input, 5).contains("b,\"gpt"));
        let errors = RowFilter { status: "4xx".into(), ..RowFilter::default() };
        assert_eq!(run(Format::Csv, errors, input, 4), "id,model,status,endpoint\r\nc,gpt-4o,429,chat\r\n");
    }

    #[test]
    fn ndjson_lines_are_kept_by_their_fields() {
        let input = "{\"id\":\"a\",\"model\":\"m1\",\"status\":200}\n{\"id\":\"b\",\"model\":\"m2\",\"status\":500}\n{\"id\":\"c\",\"model\":\"m1\",\"status\":502}";
        let filter = RowFilter { model: "m1".into(), status: "5xx".into(), ..RowFilter::default() };
        assert_eq!(run(Format::Ndjson, filter, input, 6), "{\"id\":\"c\",\"model\":\"m1\",\"status\":502}");
        assert_eq!(run(Format::Ndjson, RowFilter::default(), input, 6), input);
    }
}
